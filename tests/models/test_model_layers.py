"""Layers: sin-cos closed form, position-embedding resampling, attention, stems, FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cxrfm.models import MaskedAutoencoder, RandomMasker, mae_config, mae_flops_per_image
from cxrfm.models.layers import (
    Attention,
    ConvStem,
    DropPath,
    PatchEmbed,
    interpolate_pos_embed,
    sincos_pos_embed_2d,
)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (20, 20)])
def test_sincos_matches_closed_form(grid):
    dim = 16
    embed = sincos_pos_embed_2d(dim, grid)
    assert embed.shape == (grid[0] * grid[1], dim)
    quarter = dim // 4
    for token in [0, 1, grid[1], grid[0] * grid[1] - 1]:
        row, col = divmod(token, grid[1])
        for k in range(quarter):
            omega = 1.0 / 10000 ** (k / quarter)
            # MAE layout: [sin(col·ω), cos(col·ω), sin(row·ω), cos(row·ω)], each D/4 wide.
            assert embed[token, k].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
            assert embed[token, quarter + k].item() == pytest.approx(math.cos(col * omega), abs=1e-6)
            assert embed[token, 2 * quarter + k].item() == pytest.approx(math.sin(row * omega), abs=1e-6)
            assert embed[token, 3 * quarter + k].item() == pytest.approx(math.cos(row * omega), abs=1e-6)


def test_sincos_rejects_width_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(10, (2, 2))


def test_interpolate_keeps_class_token_and_grid_order():
    old_grid, new_grid = (3, 4), (6, 5)
    rows = torch.arange(old_grid[0], dtype=torch.float32).repeat_interleave(old_grid[1])  # varies by row only
    grid_tokens = rows[None, :, None].expand(1, -1, 2).clone()
    cls = torch.tensor([[[7.0, -7.0]]])
    resized = interpolate_pos_embed(torch.cat([cls, grid_tokens], 1), old_grid, new_grid, num_prefix_tokens=1)
    assert resized.shape == (1, 1 + 30, 2)
    assert torch.equal(resized[:, :1], cls)
    field = resized[0, 1:, 0].view(new_grid)
    # A field that varies only along rows stays constant along each row (no transposed reshape).
    torch.testing.assert_close(field, field[:, :1].expand_as(field))
    assert (field[1:, 0] >= field[:-1, 0]).all() and field[-1, 0] > field[0, 0]
    same = interpolate_pos_embed(grid_tokens, old_grid, old_grid, num_prefix_tokens=0)
    assert same is grid_tokens


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attention = Attention(dim=8, num_heads=2)
    tokens = torch.randn(2, 5, 8)
    q, k, v = attention.qkv(tokens).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # scale 1/sqrt(head dim 4)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attention(tokens), expected)


def test_drop_path_drops_whole_samples_and_is_identity_in_eval():
    drop = DropPath(0.5)
    tokens = torch.ones(64, 3, 4)
    torch.manual_seed(0)
    out = drop(tokens)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    drop.eval()
    assert torch.equal(drop(tokens), tokens)


def test_conv_stem_is_patch_aligned():
    stem = ConvStem((16, 16), 1, 8)
    stem.init_weights()
    images = torch.rand(1, 1, 32, 48)
    tokens = stem(images)
    assert tokens.shape == (1, 2 * 3, 8)
    # Changing pixels of patch (0, 1) only changes token 1.
    changed = images.clone()
    changed[..., :16, 16:32] += 1.0
    differs = (stem(changed) - tokens).abs().sum(-1)[0] > 1e-6
    assert differs.tolist() == [False, True, False, False, False, False]
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvStem((6, 6), 1, 8)


def test_linear_patch_embed_equals_linear_map():
    embed = PatchEmbed((4, 2), 1, 5)
    images = torch.rand(2, 1, 8, 6)
    patches = images.view(2, 1, 2, 4, 3, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 8)
    expected = patches @ embed.proj.weight.view(5, 8).T + embed.proj.bias
    torch.testing.assert_close(embed(images), expected)


@pytest.mark.parametrize("patch_embed", ["linear", "conv_stem"])
def test_mae_flops_match_counted_flops(patch_embed):
    config = mae_config("mae-tiny-cpu", patch_embed=patch_embed, image_size=(96, 128))
    model = MaskedAutoencoder(config).eval()
    masking = RandomMasker(0.75)(1, config.encoder.num_patches, generator=torch.Generator().manual_seed(0))
    images = torch.rand(1, 1, 96, 128)
    # The math backend decomposes attention into bmm, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images, masking)
    counted = counter.get_total_flops()
    assert mae_flops_per_image(config, masking.num_keep, training=False) == counted
    assert mae_flops_per_image(config, masking.num_keep) == 3 * counted
