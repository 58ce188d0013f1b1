"""Token maskers for masked autoencoding: plain random, and context-aware (lung-guided).

A masker decides, per sample, which ``K`` of the ``N`` patch tokens the encoder sees. It returns
a :class:`MaskingResult` in the MAE convention (``ids_keep``, ``mask`` with 1 = removed,
``ids_restore``) and never touches the image, so the training loop can log, save or reuse it.

Both maskers are fully vectorised (sorts and cumulative sums, no per-sample Python loops) and
every row depends only on that row's own ``noise`` and ``inside_fraction``: a sample is masked
identically whatever else is in its batch, so 1-GPU and multi-GPU runs agree when the noise is
derived per sample. ``K`` depends only on ``N`` and the masker, so batches stay rectangular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The per-patch region helpers live with the anatomy (the lower layer); re-exported here because
# they are what a masker's ``inside_fraction`` is computed with.
from cxrfm.utils.patch_grid import reference_rectangle_mask

# Share of the reference rectangle in its 20x20 grid (130 / 400, exactly): the context-aware
# masker's default nominal inside fraction, which fixes how many tokens it keeps.
REFERENCE_INSIDE_FRACTION = int(reference_rectangle_mask((20, 20)).sum()) / 400

# Slack for float products such as 10 · (1 − 0.9) = 0.9999999999999998, which must floor to 1.
_FLOAT_SLACK = 1e-9


@dataclass
class MaskingResult:
    """Which tokens each sample keeps.

    Attributes:
        ids_keep: ``(B, K)`` long, indices of the kept (visible) patches, in noise order.
        mask: ``(B, N)`` float, 1 = masked/removed, 0 = kept.
        ids_restore: ``(B, N)`` long; ``gather(cat([kept, removed]), ids_restore)`` puts tokens
            back in grid order.
        ratio_inside: ``(B,)`` realised fraction of inside (lung) patches masked; NaN where a
            sample has no inside patch (or no region was given).
        ratio_outside: ``(B,)`` realised fraction of outside patches masked; NaN where none.
    """

    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    ratio_inside: torch.Tensor
    ratio_outside: torch.Tensor

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]

    @property
    def num_patches(self) -> int:
        return self.mask.shape[1]

    def to(self, device: torch.device | str) -> "MaskingResult":
        return MaskingResult(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def floor_keep(count: int, mask_ratio: float) -> int:
    """Tokens kept out of ``count`` at ``mask_ratio``: ``⌊count · (1 − mask_ratio)⌋``.

    Flooring (as MAE's ``int(L * (1 - ratio))`` and the HD X-ray MAE reference do) means at
    least ``mask_ratio`` is masked; the slack stops float error from dropping a whole token.
    """
    return math.floor(count * (1.0 - mask_ratio) + _FLOAT_SLACK)


class RandomMasker:
    """MAE's uniform random masking: every sample keeps ``K = ⌊N · (1 − mask_ratio)⌋`` tokens."""

    def __init__(self, mask_ratio: float = 0.75):
        _check_ratio("mask_ratio", mask_ratio)
        self.mask_ratio = mask_ratio

    def num_keep(self, num_patches: int) -> int:
        return _check_keep(floor_keep(num_patches, self.mask_ratio), num_patches, self)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        inside_fraction: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskingResult:
        """Mask ``(batch_size, num_patches)`` tokens uniformly at random.

        ``inside_fraction`` is optional and only used to report realised per-region ratios;
        without it every patch counts as "outside" (``ratio_inside`` is NaN).
        """
        device = _resolve_device(device, noise, inside_fraction)
        noise = _noise(batch_size, num_patches, noise, generator, device)
        inside = _inside(batch_size, num_patches, inside_fraction, 0.5, device)
        num_keep = self.num_keep(num_patches)
        keep_outside = torch.full((batch_size,), num_keep, dtype=torch.long, device=device)
        # One region: rank all patches together by treating every patch as outside.
        return _select(noise, torch.zeros_like(inside), torch.zeros_like(keep_outside), keep_outside, num_keep, inside)

    def __repr__(self) -> str:
        return f"RandomMasker(mask_ratio={self.mask_ratio})"


class ContextAwareMasker:
    """Context-aware masking: mask the lung/chest region harder than the rest (HD X-ray MAE).

    Counts (all integers, fixed per ``N`` so batches stay rectangular):

    * ``K = ⌊n̂_in · (1 − r_in)⌋ + ⌊(N − n̂_in) · (1 − r_out)⌋`` with ``n̂_in = round(N · f)``
      and ``f = nominal_inside_fraction``. At ``N = 400`` with the reference's 130-patch
      rectangle and ``r_in = 0.95, r_out = 0.85`` this is ``6 + 40 = 46``, exactly the reference's
      ``int(130 · 0.05) + int(270 · 0.15)``. (Rounding the combined ``N · [f(1−r_in) +
      (1−f)(1−r_out)] = 47.0`` instead would keep one token more than the reference.)
    * Per sample, patch ``i`` is *inside* when ``inside_fraction[i] ≥ inside_threshold``
      (NaN counts as outside); ``n_in`` inside, ``n_out = N − n_in`` outside.
    * ``k_in = min(⌊n_in · (1 − r_in)⌋, K)``, ``k_out = K − k_in``. When ``n_out < k_out`` the
      surplus is kept inside instead (``k_in = K − n_out``), so ``r_in`` is met exactly (up to
      the floor) whenever feasible and ``r_out`` absorbs the difference.
    * No lung found (``n_in = 0``): all ``K`` kept outside, i.e. plain random masking at
      ``1 − K/N``. Whole image lung (``n_out = 0``): all ``K`` kept inside.

    Inside each region the kept patches are the ones with the smallest noise, as in MAE. The
    realised ratios are returned for logging.
    """

    def __init__(
        self,
        ratio_inside: float = 0.95,
        ratio_outside: float = 0.85,
        inside_threshold: float = 0.5,
        nominal_inside_fraction: float = REFERENCE_INSIDE_FRACTION,
    ):
        _check_ratio("ratio_inside", ratio_inside)
        _check_ratio("ratio_outside", ratio_outside)
        if not 0.0 <= nominal_inside_fraction <= 1.0:
            raise ValueError(f"nominal_inside_fraction must be in [0, 1], got {nominal_inside_fraction}")
        self.ratio_inside = ratio_inside
        self.ratio_outside = ratio_outside
        self.inside_threshold = inside_threshold
        self.nominal_inside_fraction = nominal_inside_fraction

    def num_keep(self, num_patches: int) -> int:
        nominal_inside = round(num_patches * self.nominal_inside_fraction)
        keep = floor_keep(nominal_inside, self.ratio_inside) + floor_keep(
            num_patches - nominal_inside, self.ratio_outside
        )
        return _check_keep(keep, num_patches, self)

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        inside_fraction: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> MaskingResult:
        """Mask ``(batch_size, num_patches)`` tokens given each patch's lung fraction.

        Args:
            inside_fraction: ``(B, N)`` fraction of each patch inside the lung/chest region
                (e.g. :func:`patch_inside_fraction` of the lung masks). Required.
            noise: ``(B, N)`` uniform ``[0, 1)``; replaces the generator draw when given.
            generator: source of the noise otherwise (the global RNG when None).
            device: where to build the result (defaults to the inputs' device, else CPU).
        """
        if inside_fraction is None:
            raise ValueError(
                "ContextAwareMasker needs inside_fraction (B, N): the fraction of each patch inside "
                "the lung region (see patch_inside_fraction); use RandomMasker for images without one"
            )
        device = _resolve_device(device, noise, inside_fraction)
        noise = _noise(batch_size, num_patches, noise, generator, device)
        inside = _inside(batch_size, num_patches, inside_fraction, self.inside_threshold, device)
        num_keep = self.num_keep(num_patches)
        num_inside = inside.sum(dim=1)  # (B,)
        num_outside = num_patches - num_inside
        # ⌊n · (1 − r_in)⌋ for every possible n, computed once in Python floats: exact on any device.
        target_table = torch.tensor(
            [floor_keep(n, self.ratio_inside) for n in range(num_patches + 1)], device=device
        )
        keep_inside = torch.clamp(target_table[num_inside], max=num_keep)
        keep_inside = torch.maximum(keep_inside, num_keep - num_outside)  # too little outside: take inside
        keep_outside = num_keep - keep_inside
        return _select(noise, inside, keep_inside, keep_outside, num_keep, inside)

    def __repr__(self) -> str:
        return (
            f"ContextAwareMasker(ratio_inside={self.ratio_inside}, ratio_outside={self.ratio_outside}, "
            f"inside_threshold={self.inside_threshold}, nominal_inside_fraction={self.nominal_inside_fraction})"
        )


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float = 0.75,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskingResult:
    """Functional form of :class:`RandomMasker`."""
    return RandomMasker(mask_ratio)(batch_size, num_patches, noise=noise, generator=generator, device=device)


def reference_chest_rectangle(grid_size: tuple[int, int] = (20, 20)) -> torch.Tensor:
    """The reference code's fixed rectangle as one row of ``inside_fraction``: ``(N,)`` in {0, 1}.

    A flattened :func:`cxrfm.anatomy.regions.reference_rectangle_mask` (the one definition: rows
    6-15, columns 3-15 of the 20x20 grid = 130 patches, scaled in twentieths on other grids).
    """
    return reference_rectangle_mask(grid_size).flatten()


def _select(
    noise: torch.Tensor,
    inside: torch.Tensor,
    keep_inside: torch.Tensor,
    keep_outside: torch.Tensor,
    num_keep: int,
    report_inside: torch.Tensor,
) -> MaskingResult:
    """Keep the ``keep_inside[b]`` inside and ``keep_outside[b]`` outside patches of lowest noise.

    ``inside`` is the region used for selection; ``report_inside`` the one used for the realised
    ratios (they differ for random masking, which selects over a single region).
    """
    order = torch.argsort(noise, dim=1, stable=True)  # (B, N) patches by increasing noise
    inside_sorted = torch.gather(inside, 1, order)
    # Rank of each patch among the patches of its own region, in noise order.
    rank_inside = torch.cumsum(inside_sorted, dim=1) - 1
    rank_outside = torch.cumsum(~inside_sorted, dim=1) - 1
    keep_sorted = torch.where(
        inside_sorted, rank_inside < keep_inside[:, None], rank_outside < keep_outside[:, None]
    )
    # Kept patches first, each group still in noise order (stable sort on a 0/1 key).
    regroup = torch.argsort((~keep_sorted).to(torch.int8), dim=1, stable=True)
    ids_shuffle = torch.gather(order, 1, regroup)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise, dtype=torch.float32)
    mask[:, :num_keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)
    ratio_inside, ratio_outside = _realised_ratios(mask, report_inside)
    return MaskingResult(ids_shuffle[:, :num_keep], mask, ids_restore, ratio_inside, ratio_outside)


def _realised_ratios(mask: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = inside.float()
    outside = 1.0 - inside
    # 0/0 = NaN marks a region the sample does not have.
    ratio_inside = (mask * inside).sum(1) / inside.sum(1)
    ratio_outside = (mask * outside).sum(1) / outside.sum(1)
    return ratio_inside, ratio_outside


def _resolve_device(device, *tensors) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in tensors:
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")


def _noise(batch_size, num_patches, noise, generator, device) -> torch.Tensor:
    if noise is None:
        draw_device = generator.device if generator is not None else device
        noise = torch.rand(batch_size, num_patches, generator=generator, device=draw_device)
    elif tuple(noise.shape) != (batch_size, num_patches):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(batch_size, num_patches)}")
    return noise.to(device)


def _inside(batch_size, num_patches, inside_fraction, threshold, device) -> torch.Tensor:
    if inside_fraction is None:
        return torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
    if tuple(inside_fraction.shape) != (batch_size, num_patches):
        raise ValueError(
            f"inside_fraction has shape {tuple(inside_fraction.shape)}, expected {(batch_size, num_patches)}"
        )
    return inside_fraction.to(device) >= threshold  # NaN >= t is False: no mask -> outside


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def _check_keep(num_keep: int, num_patches: int, masker) -> int:
    if num_keep < 1:
        raise ValueError(f"{masker!r} keeps no token out of {num_patches}; lower the mask ratios")
    return num_keep
