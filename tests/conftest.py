"""Shared fixtures. Real data lives in ../shared/data beside the repository (read-only)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("CXRFM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data``; tests that need it are skipped where it is absent."""
    path = _shared_data_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _small_torch_threads():
    # Two cores on CI: keep per-test thread pools small so parallel helpers do not oversubscribe.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture(scope="session")
def trained_report_run(tmp_path_factory):
    """One tiny English phantom report run (test split scored), reused by several tests."""
    from report_configs import tiny_report_config

    from cxrfm.recipes.report import run_report_training

    previous = torch.get_num_threads()
    try:
        return run_report_training(tiny_report_config(tmp_path_factory.mktemp("report") / "run"))
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------- tiny image files (data and CLI tests)
def save_gray(path: Path, pixels: np.ndarray) -> Path:
    """Write a uint8 / uint16 ``(H, W)`` array as PNG, JPEG or TIFF (by suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def save_dicom(path: Path, pixels: np.ndarray) -> Path:
    """Write a uint16 ``(H, W)`` MONOCHROME2 DICOM (RSNA ships DICOMs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, as RSNA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def ramp(height: int, width: int, offset: int = 0, dtype=np.uint8) -> np.ndarray:
    """A distinct, non-constant test image (a diagonal ramp shifted by ``offset``)."""
    top = np.iinfo(dtype).max
    values = (np.add.outer(np.arange(height), np.arange(width)) * 7 + offset * 13) % (top + 1)
    return values.astype(dtype)


@pytest.fixture
def write_gray() -> Callable[[Path, np.ndarray], Path]:
    return save_gray


@pytest.fixture
def write_dicom() -> Callable[[Path, np.ndarray], Path]:
    return save_dicom


@pytest.fixture
def make_ramp() -> Callable[..., np.ndarray]:
    return ramp
