"""Maskers: exact counts, region rules, per-row determinism, vectorised speed."""

from __future__ import annotations

import math
import time

import pytest
import torch

from cxrfm.utils.patch_grid import patch_inside_fraction, reference_rectangle_mask
from cxrfm.models import masking
from cxrfm.models.masking import ContextAwareMasker, MaskingResult, RandomMasker, random_masking


def _kept(result: MaskingResult) -> torch.Tensor:
    """(B, N) bool of kept patches, from ids_keep (independent of ``mask``)."""
    kept = torch.zeros_like(result.mask, dtype=torch.bool)
    return kept.scatter(1, result.ids_keep, True)


def _check_consistent(result: MaskingResult) -> None:
    batch, num_patches = result.mask.shape
    kept = _kept(result)
    # ids_keep are distinct and exactly the zeros of the mask.
    assert kept.sum(1).tolist() == [result.num_keep] * batch
    assert torch.equal(result.mask, (~kept).float())
    # ids_restore inverts the shuffle: gathering [kept, removed] in shuffled order restores the grid.
    tokens = torch.arange(num_patches).expand(batch, -1) * 10 + 3
    kept_tokens = torch.gather(tokens, 1, result.ids_keep)
    removed = torch.full((batch, num_patches - result.num_keep), -1)
    restored = torch.gather(torch.cat([kept_tokens, removed], 1), 1, result.ids_restore)
    assert torch.equal(restored[kept], tokens[kept])
    assert (restored[~kept] == -1).all()


def test_reference_rectangle_gives_reference_counts():
    rect = reference_rectangle_mask((20, 20)).flatten()
    grid = rect.view(20, 20)
    assert rect.sum() == 130
    # Rows 6-15, columns 3-15 inclusive, as in random_masking_yiliao.
    assert grid[6:16, 3:16].all() and grid.sum() == grid[6:16, 3:16].sum()
    masker = ContextAwareMasker(ratio_inside=0.95, ratio_outside=0.85)
    assert masker.num_keep(400) == 46
    result = masker(4, 400, inside_fraction=rect.expand(4, -1), generator=torch.Generator().manual_seed(0))
    kept = _kept(result)
    assert (kept & rect.bool()).sum(1).tolist() == [6] * 4
    assert (kept & ~rect.bool()).sum(1).tolist() == [40] * 4
    torch.testing.assert_close(result.ratio_inside, torch.full((4,), 1 - 6 / 130))
    torch.testing.assert_close(result.ratio_outside, torch.full((4,), 1 - 40 / 270))
    _check_consistent(result)


def _inside_rows(grid_h: int, grid_w: int, counts: list[int], generator: torch.Generator) -> torch.Tensor:
    """One row per count with that many randomly placed inside patches (fractions 0.5-1 inside, 0-0.49 outside)."""
    num_patches = grid_h * grid_w
    rows = []
    for count in counts:
        perm = torch.randperm(num_patches, generator=generator)
        fraction = torch.rand(num_patches, generator=generator) * 0.49
        fraction[perm[:count]] = 0.5 + 0.5 * torch.rand(count, generator=generator)
        rows.append(fraction)
    return torch.stack(rows)


@pytest.mark.parametrize("grid", [(20, 20), (12, 20), (8, 8)])
@pytest.mark.parametrize("inside_share", [0.0, 0.01, 0.1, 0.325, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("ratios", [(0.95, 0.85), (0.9, 0.7), (1.0, 0.75)])
def test_context_aware_counts_follow_the_rule(grid, inside_share, ratios):
    ratio_inside, ratio_outside = ratios
    masker = ContextAwareMasker(ratio_inside=ratio_inside, ratio_outside=ratio_outside)
    num_patches = grid[0] * grid[1]
    num_inside = round(inside_share * num_patches)
    generator = torch.Generator().manual_seed(num_inside)
    fraction = _inside_rows(*grid, [num_inside] * 3, generator)
    result = masker(3, num_patches, inside_fraction=fraction, generator=generator)
    _check_consistent(result)

    num_keep = masker.num_keep(num_patches)
    nominal_inside = round(num_patches * 130 / 400)
    assert num_keep == math.floor(nominal_inside * (1 - ratio_inside) + 1e-9) + math.floor(
        (num_patches - nominal_inside) * (1 - ratio_outside) + 1e-9
    )
    num_outside = num_patches - num_inside
    expected_inside = min(math.floor(num_inside * (1 - ratio_inside) + 1e-9), num_keep)
    expected_inside = max(expected_inside, num_keep - num_outside)
    inside = fraction >= 0.5
    kept = _kept(result)
    assert (kept & inside).sum(1).tolist() == [expected_inside] * 3
    assert (kept & ~inside).sum(1).tolist() == [num_keep - expected_inside] * 3
    if num_inside == 0:
        assert torch.isnan(result.ratio_inside).all()
    else:
        torch.testing.assert_close(result.ratio_inside, torch.full((3,), 1 - expected_inside / num_inside))
    if num_outside == 0:
        assert torch.isnan(result.ratio_outside).all()
    else:
        expected = 1 - (num_keep - expected_inside) / num_outside
        torch.testing.assert_close(result.ratio_outside, torch.full((3,), expected))


def test_edge_cases_no_lung_whole_lung_small_lung():
    masker = ContextAwareMasker()
    num_keep = masker.num_keep(400)
    fractions = torch.zeros(4, 400)
    fractions[1] = 1.0  # whole image lung
    fractions[2, :10] = 1.0  # lung smaller than 1/(1 - r_in) patches: floor(10 · 0.05) = 0 inside
    fractions[3] = float("nan")  # sample without a lung mask
    result = masker(4, 400, inside_fraction=fractions, generator=torch.Generator().manual_seed(3))
    kept = _kept(result)
    inside = fractions >= 0.5
    assert (kept & inside).sum(1).tolist() == [0, num_keep, 0, 0]
    assert (kept & ~inside).sum(1).tolist() == [num_keep, 0, num_keep, num_keep]
    # No lung: plain random masking at 1 - K/N over the whole image.
    assert result.ratio_outside[0].item() == pytest.approx(1 - num_keep / 400)
    assert torch.isnan(result.ratio_inside[[0, 3]]).all() and torch.isnan(result.ratio_outside[1])
    assert result.ratio_inside[2].item() == 1.0


def test_outside_too_small_takes_surplus_inside():
    masker = ContextAwareMasker(ratio_inside=0.95, ratio_outside=0.85)
    fractions = torch.ones(1, 400)
    fractions[0, :20] = 0.0  # 20 outside patches < 40 wanted outside
    result = masker(1, 400, inside_fraction=fractions, generator=torch.Generator().manual_seed(0))
    kept = _kept(result)[0]
    assert kept[:20].sum() == 20 and kept[20:].sum() == 46 - 20
    assert result.ratio_outside.item() == 0.0


def test_rows_depend_only_on_their_own_noise_and_region():
    masker = ContextAwareMasker()
    generator = torch.Generator().manual_seed(11)
    noise = torch.rand(6, 240, generator=generator)
    fraction = _inside_rows(12, 20, [0, 30, 80, 120, 200, 240], generator)
    full = masker(6, 240, inside_fraction=fraction, noise=noise)
    order = [4, 1, 5]
    part = masker(3, 240, inside_fraction=fraction[order], noise=noise[order])
    for field in ("ids_keep", "mask", "ids_restore"):
        assert torch.equal(getattr(part, field), getattr(full, field)[order])
    single = masker(1, 240, inside_fraction=fraction[2:3], noise=noise[2:3])
    assert torch.equal(single.ids_keep, full.ids_keep[2:3])


def test_generator_reproducible_and_seed_sensitive():
    masker = RandomMasker(0.75)
    first = masker(4, 196, generator=torch.Generator().manual_seed(5))
    again = masker(4, 196, generator=torch.Generator().manual_seed(5))
    other = masker(4, 196, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first.ids_keep, again.ids_keep)
    assert not torch.equal(first.ids_keep, other.ids_keep)


def test_noise_orders_kept_tokens():
    # The kept tokens are those of lowest noise, listed in noise order (MAE's convention).
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6]])
    result = random_masking(1, 8, 0.5, noise=noise)
    assert result.ids_keep.tolist() == [[1, 5, 3, 2]]
    assert result.mask.tolist() == [[1, 0, 0, 0, 1, 0, 1, 1]]


def test_random_masker_counts_and_reported_ratios():
    masker = RandomMasker(0.9)
    assert masker.num_keep(400) == 40 and masker.num_keep(10) == 1  # 10 · 0.1 is 0.999... in floats
    fraction = reference_rectangle_mask((20, 20)).flatten().expand(8, -1)
    result = masker(8, 400, inside_fraction=fraction, generator=torch.Generator().manual_seed(0))
    _check_consistent(result)
    kept = _kept(result)
    inside = fraction.bool()
    torch.testing.assert_close(result.ratio_inside, 1 - (kept & inside).sum(1).float() / 130)
    plain = masker(8, 400, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(plain.ratio_inside).all()
    torch.testing.assert_close(plain.ratio_outside, torch.full((8,), 0.9))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="inside_fraction"):
        ContextAwareMasker()(2, 400)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 10\), expected \(2, 400\)"):
        RandomMasker()(2, 400, noise=torch.rand(2, 10))
    with pytest.raises(ValueError, match="inside_fraction has shape"):
        ContextAwareMasker()(2, 400, inside_fraction=torch.rand(2, 399))
    with pytest.raises(ValueError, match="keeps no token"):
        RandomMasker(1.0).num_keep(400)
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasker(1.5)


def test_vectorised_batch_of_64_is_fast():
    masker = ContextAwareMasker()
    generator = torch.Generator().manual_seed(0)
    fraction = torch.rand(64, 400, generator=generator)
    masker(64, 400, inside_fraction=fraction, generator=generator)  # warm-up
    start = time.perf_counter()
    for _ in range(10):
        masker(64, 400, inside_fraction=fraction, generator=generator)
    assert (time.perf_counter() - start) / 10 < 0.1


def test_patch_inside_fraction_pools_lung_masks():
    masks = torch.zeros(2, 1, 8, 12)
    masks[0, 0, :4, :4] = 1.0  # exactly patch (0, 0) of a 2×3 grid of 4×4 patches
    masks[0, 0, 4:6, 8:12] = 1.0  # half of patch (1, 2)
    masks[1] = float("nan")
    fraction = patch_inside_fraction(masks, (4, 4))
    assert fraction.shape == (2, 6)
    assert fraction[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert torch.isnan(fraction[1]).all()
    with pytest.raises(ValueError, match="not divisible"):
        patch_inside_fraction(masks, (5, 4))


def test_models_and_anatomy_share_one_definition_of_patch_fractions_and_the_rectangle():
    # One definition (cxrfm.utils.patch_grid): anatomy re-exports it, the masker flattens it.
    import cxrfm.anatomy

    assert cxrfm.anatomy.patch_inside_fraction is patch_inside_fraction
    assert cxrfm.anatomy.reference_rectangle_mask is reference_rectangle_mask
    assert masking.REFERENCE_INSIDE_FRACTION == 130 / 400
    for grid in ((20, 20), (16, 16), (40, 20), (7, 9)):
        assert torch.equal(masking.reference_chest_rectangle(grid), reference_rectangle_mask(grid).flatten())
    # Non-20x20 grids scale in twentieths: rows [6/20, 16/20), columns [3/20, 16/20) of a 16x16 grid
    # round to rows 5..12 and columns 2..12 inclusive.
    grid = masking.reference_chest_rectangle((16, 16)).view(16, 16)
    rows, columns = torch.nonzero(grid, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), columns.min().item(), columns.max().item()) == (5, 12, 2, 12)
    assert int(grid.sum()) == 8 * 11
