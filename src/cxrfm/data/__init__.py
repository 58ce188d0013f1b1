"""Datasets: one sample interface (:class:`CXRSample`), adapters for public CXR sets, and shards.

Every adapter is a :class:`CXRDataset` subclass that parses its published metadata into records;
:func:`build_dataset` builds any kind (adapters, the phantom, shard streams) from a :class:`DatasetSpec`. :mod:`cxrfm.data.phantom` is the embedded default: procedural
chest radiographs with exact lung masks, findings and English/Chinese reports. :func:`write_shards` / :class:`ShardDataset` store and
stream pre-resized samples as WebDataset tar shards.
"""

from cxrfm.data.chexpert import CheXpertDataset
from cxrfm.data.covid import CovidChestXrayDataset
from cxrfm.data.dataset import CXRDataset, CXRRecord, ValidationReport
from cxrfm.data.folder import ImageFolderDataset
from cxrfm.data.iu_xray import IUXrayDataset
from cxrfm.data.labels import FINDINGS, align_labels, canonical_finding, labels_from_mapping
from cxrfm.data.manifest import ManifestDataset
from cxrfm.data.mimic import MIMICCXRDataset
from cxrfm.data.nih import NIHChestXray14Dataset
from cxrfm.data.phantom import (
    DEFAULT_FINDING_PROBS,
    ChestPhantom,
    PhantomCase,
    PhantomConfig,
    PhantomDataset,
    generate_phantom,
)
from cxrfm.data.openist import OpenISTLungDataset
from cxrfm.data.registry import ADAPTERS, DatasetSpec, build_dataset
from cxrfm.data.rsna import RSNAPneumoniaDataset
from cxrfm.data.sample import CXRBatch, CXRSample, collate_samples
from cxrfm.data.shards import ShardDataset, read_shard_index, write_shards

__all__ = [
    "ADAPTERS",
    "DatasetSpec",
    "FINDINGS",
    "DEFAULT_FINDING_PROBS",
    "ChestPhantom",
    "PhantomCase",
    "PhantomConfig",
    "PhantomDataset",
    "generate_phantom",
    "CXRBatch",
    "CXRDataset",
    "CXRRecord",
    "CXRSample",
    "CheXpertDataset",
    "CovidChestXrayDataset",
    "IUXrayDataset",
    "ImageFolderDataset",
    "MIMICCXRDataset",
    "ManifestDataset",
    "NIHChestXray14Dataset",
    "OpenISTLungDataset",
    "RSNAPneumoniaDataset",
    "ShardDataset",
    "ValidationReport",
    "align_labels",
    "build_dataset",
    "canonical_finding",
    "collate_samples",
    "labels_from_mapping",
    "read_shard_index",
    "write_shards",
]
