"""Run a saved segmenter over a folder of images or a manifest and write mask PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from cxrfm.anatomy.figures import save_contour_overlays
from cxrfm.anatomy.segmenter import LungSegmenter

log = logging.getLogger(__name__)

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

    segmenter = LungSegmenter.from_pretrained(weights, map_location=device)
    dataset, base = _open_images(Path(source))
    out = Path(out)
    written = 0
    for index in tqdm(range(len(dataset)), desc="segment", disable=not progress):
        sample = dataset[index]
        image = sample.image[None].to(device)
        mask = segmenter.predict_mask(image, threshold=threshold, keep_largest=keep_largest)[0].cpu()
        name = _output_name(sample.meta["path"], base, index)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(out / name, mask[0])
        if overlays:
            save_contour_overlays(sample.image, mask, out / "overlays" / name, titles=[Path(name).stem])
        written += 1
    log.info("segmented %d images from %s", written, source)
    return written

