"""Fixtures for the I/O tests: real DICOM files built with pydicom at test time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Digital X-Ray Image Storage - For Presentation
_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def build_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int | None = None,
    **elements: Any,
) -> Path:
    """Write a DICOM file (with preamble and file meta) holding ``pixels``.

    ``pixels``: ``(H, W)`` uint8/uint16/int16 gray, ``(H, W, 3)`` uint8 RGB, ``(F, H, W)`` with
    ``frames=F``, or None for a file without Pixel Data. Extra keyword arguments become data
    elements (``RescaleSlope=2``, ``WindowCenter=100``, ...).
    """
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = _DX_STORAGE
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = Dataset()
    dataset.file_meta = file_meta
    dataset.SOPClassUID = _DX_STORAGE
    dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = "1.2.3.4.5"
    dataset.SeriesInstanceUID = "1.2.3.4.5.6"
    dataset.PatientID = "PATIENT-7"
    dataset.Modality = "DX"
    dataset.ViewPosition = "PA"
    dataset.PixelSpacing = [0.15, 0.125]
    dataset.PhotometricInterpretation = photometric
    if pixels is not None:
        is_rgb = pixels.ndim == 3 and frames is None
        height, width = pixels.shape[-3:-1] if is_rgb else pixels.shape[-2:]
        dataset.Rows, dataset.Columns = int(height), int(width)
        dataset.SamplesPerPixel = 3 if is_rgb else 1
        if is_rgb:
            dataset.PlanarConfiguration = 0
        bits_allocated = pixels.dtype.itemsize * 8
        dataset.BitsAllocated = bits_allocated
        dataset.BitsStored = bits_stored or bits_allocated
        dataset.HighBit = dataset.BitsStored - 1
        dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if frames is not None:
            dataset.NumberOfFrames = frames
        dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    else:
        dataset.Rows, dataset.Columns = 4, 4
        dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored = 1, 16, 16
        dataset.HighBit, dataset.PixelRepresentation = 15, 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def make_dicom() -> Callable[..., Path]:
    """The :func:`build_dicom` writer (a fixture so test modules need no imports from conftest)."""
    return build_dicom
