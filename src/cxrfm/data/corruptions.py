"""Planted data noise: the kinds of bad images a CXR training set holds, drawn on purpose.

Diff-CXR's latent noise filtering strategy (shared/papers/003 Sec. II-B) removes "noisy" images
from MIMIC-CXR; to measure a filter we plant known ones. :func:`corrupt_image` turns one image
``(1, H, W)`` in [0, 1] into one of :data:`CORRUPTION_KINDS`:

* ``inverted``: ``1 - image`` (a negative, as some archives store MONOCHROME1 wrongly);
* ``rotated``: a quarter, half or three-quarter turn (3 in 4), else a large angle (30-150 degrees)
  with black corners; non-square images are resized back to ``(H, W)``;
* ``lateral_flip``: mirrored left-right (heart on the wrong side);
* ``hard_crop``: a small window (20-40 % of each side) zoomed back to the full size;
* ``burnt_in_text``: lines of annotation text ("PORTABLE", dates, IDs, exposure) drawn with PIL,
  white, sometimes on a black label box, plus a large side marker;
* ``heavy_noise``: strong speckle and Gaussian noise (sd 0.25-0.45), clipped to [0, 1];
* ``blank``: a constant frame (black, white or grey) with faint noise;
* ``non_cxr_texture``: a procedural texture unrelated to the CXR: 1/f^beta noise (natural-image
  statistics), sometimes overlaid with oriented stripes or a checkerboard.

:class:`PlantedCorruptions` wraps any dataset of :class:`~cxrfm.data.sample.CXRSample` and
corrupts a seeded ``fraction`` of its items, recording ``meta["corruption"]`` (the kind, or None).
Every draw is keyed by ``(seed, index)``, so an item looks the same whenever it is read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from cxrfm.data.sample import CXRSample

CORRUPTION_KINDS = ("inverted", "rotated", "lateral_flip", "hard_crop", "burnt_in_text", "heavy_noise", "blank", "non_cxr_texture")

TEXT_LINES = ("PORTABLE", "AP SUPINE", "ERECT", "ICU BED {n}", "ID {id}", "{date}", "kVp {kvp} mAs {mas}", "ACC {id}", "SEMI-UPRIGHT")


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, h, w)`` -> ``(1, *size)`` bilinear."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def _inverted(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return 1.0 - image


def _rotated(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    size = tuple(image.shape[-2:])
    if rng.random() < 0.75:
        return _resize(torch.rot90(image, int(rng.integers(1, 4)), dims=(-2, -1)), size)
    angle = math.radians(float(rng.uniform(30, 150)) * (1 if rng.random() < 0.5 else -1))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, *size], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _lateral_flip(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return torch.flip(image, dims=(-1,))


def _hard_crop(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    height, width = image.shape[-2:]
    crop_h = max(2, int(round(height * rng.uniform(0.2, 0.4))))
    crop_w = max(2, int(round(width * rng.uniform(0.2, 0.4))))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    return _resize(image[:, top : top + crop_h, left : left + crop_w], (height, width))


def _text_line(rng: np.random.Generator) -> str:
    template = TEXT_LINES[int(rng.integers(len(TEXT_LINES)))]
    return template.format(
        n=int(rng.integers(1, 40)), id=int(rng.integers(10_000, 99_999)), kvp=int(rng.integers(70, 125)),
        mas=round(float(rng.uniform(1, 8)), 1),
        date=f"20{int(rng.integers(10, 24))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} "
             f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
    )


def _burnt_in_text(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    height, width = image.shape[-2:]
    canvas = Image.fromarray((image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    size = max(8, int(round(min(height, width) * rng.uniform(0.07, 0.11))))
    font = ImageFont.load_default(size=size)
    lines = [_text_line(rng) for _ in range(int(rng.integers(3, 6)))]
    x, y = int(width * rng.uniform(0.02, 0.1)), int(height * rng.uniform(0.02, 0.1))
    if rng.random() < 0.5:  # text at the bottom instead of the top
        y = max(0, int(height * 0.98) - len(lines) * int(size * 1.2))
    if rng.random() < 0.4:  # a black label box behind it
        draw.rectangle([x - 2, y - 2, width - x, y + len(lines) * int(size * 1.2) + 2], fill=0)
    for row, line in enumerate(lines):
        draw.text((x, y + row * int(size * 1.2)), line, fill=255, font=font)
    marker = ImageFont.load_default(size=max(10, int(min(height, width) * 0.22)))
    draw.text((int(width * rng.uniform(0.65, 0.8)), int(height * rng.uniform(0.3, 0.5))), "R" if rng.random() < 0.5 else "L",
              fill=255, font=marker)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None]


def _heavy_noise(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    sd = float(rng.uniform(0.25, 0.45))
    shape = tuple(image.shape)
    speckle = torch.from_numpy(rng.normal(1.0, 0.5, shape).astype(np.float32))
    gaussian = torch.from_numpy(rng.normal(0.0, sd, shape).astype(np.float32))
    return image * speckle + gaussian


def _blank(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    level = (0.0, 1.0, float(rng.uniform(0.2, 0.8)))[int(rng.integers(3))]
    return torch.full_like(image, level) + torch.from_numpy(rng.normal(0.0, 0.01, tuple(image.shape)).astype(np.float32))


def _non_cxr_texture(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    height, width = image.shape[-2:]
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    amplitude = radius ** (-float(rng.uniform(1.5, 2.5)) / 2)  # power ~ 1/f^beta
    amplitude[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
    texture = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    choice = rng.random()
    if choice < 0.35:  # oriented stripes (fabric, wood grain)
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.15)
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        texture = texture / (texture.std() + 1e-8) + 1.5 * stripes
    elif choice < 0.6:  # a checkerboard (tiles, a calibration target)
        cells = int(rng.integers(4, 12))
        checker = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
        texture = texture / (texture.std() + 1e-8) + 1.5 * checker
    low, high = np.percentile(texture, [1, 99])
    texture = (texture - low) / max(high - low, 1e-8)
    return torch.from_numpy(texture.astype(np.float32))[None]


_CORRUPTIONS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "inverted": _inverted, "rotated": _rotated, "lateral_flip": _lateral_flip, "hard_crop": _hard_crop,
    "burnt_in_text": _burnt_in_text, "heavy_noise": _heavy_noise, "blank": _blank, "non_cxr_texture": _non_cxr_texture,
}


def check_kinds(kinds: Sequence[str], field: str = "kinds") -> tuple[str, ...]:
    """``kinds`` as a tuple of known corruption kinds (a ValueError naming ``field`` otherwise)."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(f"{field} must name at least one corruption kind ({', '.join(CORRUPTION_KINDS)})")
    unknown = [kind for kind in kinds if kind not in _CORRUPTIONS]
    if unknown:
        raise ValueError(f"{field}: unknown corruption kind {unknown[0]!r}; known: {', '.join(CORRUPTION_KINDS)}")
    return kinds


def corrupt_image(image: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """``image (1, H, W)`` in [0, 1] -> the ``kind`` corruption of it, ``(1, H, W)`` float32 in [0, 1]."""
    check_kinds((kind,), "kind")
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 1:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (1, H, W) tensor, got {got}")
    corrupted = _CORRUPTIONS[kind](image.detach().float().cpu(), rng)
    return corrupted.clamp(0.0, 1.0).contiguous()


class PlantedCorruptions(Dataset):
    """``dataset`` with a seeded ``fraction`` of its items corrupted.

    Args:
        dataset: any map-style dataset of :class:`CXRSample`.
        fraction: share of items to corrupt (``round(fraction * len)`` of them).
        kinds: corruption kinds to plant; ``assign="cycle"`` deals them out in turn (equal counts
            within one), ``"sample"`` draws each item's kind at random.
        seed: which items, which kinds and every corruption's randomness.

    A corrupted sample gets the new image, ``lung_mask`` None (the mask no longer fits it) and
    ``meta["corruption"]`` = its kind; every other sample is unchanged with ``meta["corruption"]``
    None. The wrapped samples are copied, never modified (cached datasets stay clean).

    Attributes:
        planted: ``{index: kind}`` of the corrupted items, by index.
    """

    def __init__(self, dataset: Dataset, fraction: float = 0.075, kinds: Sequence[str] = CORRUPTION_KINDS, *, seed: int = 0,
                 assign: str = "cycle"):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
        if assign not in ("cycle", "sample"):
            raise ValueError(f"assign must be 'cycle' or 'sample', got {assign!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.dataset, self.fraction, self.kinds, self.seed = dataset, float(fraction), check_kinds(kinds), seed
        size = len(dataset)
        rng = np.random.default_rng([seed, 0x5EED])
        chosen = rng.choice(size, size=int(round(self.fraction * size)), replace=False).tolist()
        if assign == "cycle":
            order = rng.permutation(len(self.kinds)).tolist()
            drawn = [self.kinds[order[i % len(self.kinds)]] for i in range(len(chosen))]
        else:
            drawn = [self.kinds[int(k)] for k in rng.integers(0, len(self.kinds), len(chosen))]
        self.planted: dict[int, str] = dict(sorted(zip(chosen, drawn)))

    def __len__(self) -> int:
        return len(self.dataset)

    def kind_of(self, index: int) -> str | None:
        """The kind planted at ``index`` (None: a clean item)."""
        return self.planted.get(int(index) % len(self) if index < 0 else int(index))

    def counts(self) -> dict[str, int]:
        """Planted items per kind (every kind of ``kinds``, zeros included)."""
        return {kind: sum(1 for k in self.planted.values() if k == kind) for kind in self.kinds}

    def __getitem__(self, index: int) -> CXRSample:
        sample = self.dataset[index]
        kind = self.kind_of(index)
        meta = {**sample.meta, "corruption": kind}
        if kind is None:
            return dataclasses.replace(sample, meta=meta)
        rng = np.random.default_rng([self.seed, int(index) % len(self)])
        return dataclasses.replace(sample, image=corrupt_image(sample.image, kind, rng), lung_mask=None, meta=meta)
