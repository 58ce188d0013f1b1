"""Image I/O: every file format -> the toolkit's one pixel convention.

``read_image(path) -> np.ndarray`` of shape ``(H, W)``, ``float32`` in ``[0, 1]`` (0 = black), for
PNG/JPEG/TIFF (8/16 bit, any PIL mode) and DICOM. Every failure raises
:class:`cxrfm.errors.ImageReadError` naming the file and the reason.
"""

from cxrfm.io.dicom import read_dicom
from cxrfm.io.image import fit_geometry, read_image, read_mask, resize_image, resize_mask, write_image

__all__ = [
    "fit_geometry",
    "read_dicom",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
    "write_image",
]
