"""pydicom's own shipped test corpus through our readers: a clean read or ImageReadError, never raw.

Every entry of ``pydicom.data.get_testdata_files()`` (193 with pydicom 3.0.2: real-world DICOMs
from many vendors and encoders, deliberately broken files such as ``badVR.dcm`` and
``MR_truncated.dcm``, DICOMDIRs, structured reports, waveforms, and the non-DICOM files and
folders that sit beside them) either reads through :func:`cxrfm.io.read_image`, ``read_mask`` and
``read_dicom`` as a finite ``(H, W)`` float32 image in ``[0, 1]``, or raises
:class:`~cxrfm.errors.ImageReadError` naming the file. The whole corpus takes about 2 s.

Measured with pydicom 3.0.2, Pillow and pylibjpeg-libjpeg installed (no openjpeg / gdcm):
81 entries read, 112 are refused. The refusals: multi-frame files by design (rtdose, 2-frame RLE,
``examples_ybr_color``: 9), files without pixel data (DICOMDIR, SR, RT plan / struct, waveform ...),
folders (``dicomdirtests/...``), non-DICOM files (README, ``.json``, ``.dump``, ``.icc``, ``.gz``),
``badVR.dcm`` (NumberOfFrames ``'1A'``), ``MR_truncated.dcm`` and JPEG streams the installed
decoders cannot decode. The counts depend on the installed decoder plug-ins, so the test asserts
only the contract, plus a floor on the number read so that a regression refusing good files shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from cxrfm.errors import ImageReadError
from cxrfm.io import read_dicom, read_image, read_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on its broken files

CORPUS = sorted(get_testdata_files())


def _label(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("test_files") + 1 :]) if "test_files" in parts else Path(path).name


def _outcome(reader, path: str) -> str:
    """``"read"`` after checking the image, ``"refused"`` after checking the error names the file."""
    try:
        result = reader(path)
    except ImageReadError as error:
        assert str(path) in str(error), f"{reader.__name__}: error does not name the file: {error}"
        assert error.path == str(path) and error.reason
        return "refused"
    image = result[0] if isinstance(result, tuple) else result
    assert isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.float32
    assert image.shape[0] > 0 and image.shape[1] > 0
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    return "read"


@pytest.mark.skipif(not CORPUS, reason="pydicom ships no test files here")
@pytest.mark.parametrize("path", CORPUS, ids=[_label(p) for p in CORPUS])
def test_corpus_file_reads_or_raises_image_read_error(path):
    outcomes = {reader.__name__: _outcome(reader, path) for reader in (read_image, read_mask, read_dicom)}
    # read_mask skips the LUTs and read_dicom adds the metadata: none may refuse what read_image
    # reads (metadata that is broken but not needed for the pixels is dropped, not fatal).
    if outcomes["read_image"] == "read":
        assert outcomes["read_dicom"] == "read" and outcomes["read_mask"] == "read", outcomes


def test_corpus_counts():
    if not CORPUS:
        pytest.skip("pydicom ships no test files here")
    read = sum(_outcome(read_image, path) == "read" for path in CORPUS)
    assert read >= 60, f"only {read} of {len(CORPUS)} corpus files read"
    assert read < len(CORPUS)


def test_bad_vr_number_of_frames_is_refused_naming_file_and_element():
    # pydicom's own badVR.dcm: NumberOfFrames (IS) is '1A'. It used to escape as a raw ValueError.
    path = get_testdata_file("badVR.dcm")
    for reader in (read_image, read_mask, read_dicom):
        with pytest.raises(ImageReadError, match="NumberOfFrames") as caught:
            reader(path)
        assert str(path) in str(caught.value) and "'1A'" in caught.value.reason


@pytest.mark.parametrize("name", ["rtdose.dcm", "SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm"])
def test_multi_frame_corpus_files_are_refused_by_design(name):
    path = get_testdata_file(name)
    with pytest.raises(ImageReadError, match="multi-frame DICOM") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "examples_palette.dcm"])
def test_known_good_corpus_files_read(name):
    assert _outcome(read_image, get_testdata_file(name)) == "read"
