"""Lung masks from a trained segmenter: a batch of images, or a folder / manifest to mask PNGs.

``LungMaskPipeline.from_pretrained(run_dir)(images)`` returns ``(B, 1, H, W)`` binary masks;
:func:`predict_folder` writes one 8-bit PNG (255 = lung) per image, optionally with contour overlays.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

import torch

from cxrfm.anatomy.segmenter import LungSegmenter
from cxrfm.utils.runtime import resolve_device

log = logging.getLogger(__name__)


class LungMaskPipeline:
    """A :class:`LungSegmenter` in eval mode on one device; ``pipeline(images) -> (B, 1, H, W)`` masks.

    ``threshold`` cuts the probability map; ``keep_largest`` keeps that many connected components
    (0 = all).
    """

    def __init__(self, segmenter: LungSegmenter, device: str | torch.device = "auto", run_dir: Path | None = None):
        self.device = resolve_device(device)
        self.segmenter = segmenter.eval().to(self.device)
        self.run_dir = run_dir

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "auto") -> "LungMaskPipeline":
        """The segmenter saved in ``run_dir`` (``config.json`` + ``model.safetensors``)."""
        return cls(LungSegmenter.from_pretrained(run_dir, map_location="cpu"), device, Path(run_dir))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, threshold: float = 0.5, keep_largest: int = 2) -> torch.Tensor:
        """``images (B, 1, H, W)`` or ``(1, H, W)`` in [0, 1] -> float32 {0, 1} masks of the same shape, on CPU."""
        single = images.ndim == 3
        batch = images[None] if single else images
        masks = self.segmenter.predict_mask(batch.to(self.device), threshold=threshold, keep_largest=keep_largest).cpu()
        return masks[0] if single else masks

def _open_images(source: Path):
    """A folder -> every image under it; a manifest file (CSV / JSONL) -> its rows."""
    from cxrfm.data.folder import ImageFolderDataset
    from cxrfm.data.manifest import ManifestDataset

    if source.is_dir() and not any((source / name).is_file() for name in ("manifest.csv", "manifest.jsonl")):
        return ImageFolderDataset(source), source
    return ManifestDataset(source), (source if source.is_dir() else source.parent)


def _output_name(image_path: str, base: Path, index: int) -> Path:
    """Mirror the image's path below ``base`` (so equal stems in different folders do not collide)."""
    path = Path(image_path)
    try:
        relative = path.resolve().relative_to(base.resolve())
    except ValueError:
        relative = Path(f"{index:06d}-{path.name}")
    return relative.with_suffix(".png")


def predict_folder(
    weights: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    threshold: float = 0.5,
    keep_largest: int = 2,
    overlays: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> int:
    """Write ``out/<relative path>.png`` (8-bit, 255 = lung) for every image; returns the count.

    With ``overlays`` also ``out/overlays/<relative path>.png``: the image with the mask contour.
    """
    from cxrfm.io import write_image

    pipeline = LungMaskPipeline.from_pretrained(weights, device)
    dataset, base = _open_images(Path(source))
    out = Path(out)
    written = 0
    for index in tqdm(range(len(dataset)), desc="segment", disable=not progress):
        sample = dataset[index]
        mask = pipeline(sample.image, threshold=threshold, keep_largest=keep_largest)
        name = _output_name(sample.meta["path"], base, index)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(out / name, mask[0])
        if overlays:
            from cxrfm.figures.contours import save_contour_overlays

            save_contour_overlays(sample.image, mask, out / "overlays" / name, titles=[Path(name).stem])
        written += 1
    log.info("segmented %d images from %s", written, source)
    return written

