"""Masked autoencoder: patchify, decoder unshuffle, masked-only loss, presets, save/load."""

from __future__ import annotations

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models import (
    MAE_PRESETS,
    ContextAwareMasker,
    MAEConfig,
    MaskedAutoencoder,
    RandomMasker,
    VisionTransformer,
    ViTConfig,
    mae_config,
    patchify,
    reference_chest_rectangle,
    unpatchify,
)
from cxrfm.models.layers import sincos_pos_embed_2d


def tiny_mae(**encoder_overrides) -> MaskedAutoencoder:
    encoder = ViTConfig(
        **{**dict(image_size=(32, 48), patch_size=(8, 8), embed_dim=32, depth=2, num_heads=4), **encoder_overrides}
    )
    return MaskedAutoencoder(MAEConfig(encoder, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2))


def masking_for(model: MaskedAutoencoder, batch: int, seed: int = 0, ratio: float = 0.75):
    return RandomMasker(ratio)(batch, model.num_patches, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("size", "patch"), [((32, 32), (8, 8)), ((32, 48), (8, 8)), ((24, 40), (4, 8)), ((64, 64), (64, 64)), ((12, 20), (1, 1))]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_unpatchify_identity(size, patch, channels):
    images = torch.rand(2, channels, *size)
    patches = patchify(images, patch)
    grid = (size[0] // patch[0], size[1] // patch[1])
    assert patches.shape == (2, grid[0] * grid[1], patch[0] * patch[1] * channels)
    assert torch.equal(unpatchify(patches, patch, grid, channels), images)


def test_patchify_order_is_row_major_with_pixels_in_patch_order():
    images = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    patches = patchify(images, (2, 3))  # grid 2×2
    assert patches[0, 1].tolist() == [3, 4, 5, 9, 10, 11]  # top-right patch
    assert patches[0, 2].tolist() == [12, 13, 14, 18, 19, 20]  # bottom-left patch
    with pytest.raises(ValueError, match=r"\(4, 6\) is not divisible by patch_size \(3, 3\)"):
        patchify(images, (3, 3))


def test_encoder_latent_has_kept_tokens_only():
    model = tiny_mae()
    masking = masking_for(model, 2)
    latent = model.forward_encoder(torch.rand(2, 1, 32, 48), masking)
    assert latent.shape == (2, 1 + masking.num_keep, 32) and masking.num_keep == 6


def test_decoder_unshuffles_into_grid_order():
    # The same kept set listed in another order must give the same prediction: the encoder is
    # permutation-equivariant, so only a wrong ids_restore gather in the decoder could differ.
    torch.manual_seed(0)
    model = tiny_mae().eval()
    images = torch.rand(1, 1, 32, 48)
    noise = torch.rand(1, 24)
    first = RandomMasker(0.75)(1, 24, noise=noise)
    kept = first.ids_keep[0]
    permuted_noise = noise.clone()
    permuted_noise[0, kept] = noise[0, kept.flip(0)]
    second = RandomMasker(0.75)(1, 24, noise=permuted_noise)
    assert set(second.ids_keep[0].tolist()) == set(kept.tolist())
    assert not torch.equal(second.ids_keep, first.ids_keep)
    with torch.no_grad():
        torch.testing.assert_close(model(images, second).pred, model(images, first).pred)


def test_decoder_pos_embed_is_fixed_sincos():
    model = tiny_mae()
    torch.testing.assert_close(model.decoder_pos_embed[0, 1:], sincos_pos_embed_2d(16, (4, 6)), rtol=0, atol=0)
    assert "decoder_pos_embed" not in model.state_dict()


def test_loss_counts_only_masked_patches():
    model = tiny_mae()
    images = torch.rand(2, 1, 32, 48)
    masking = masking_for(model, 2)
    pred = torch.rand(2, 24, 64)
    loss = model.forward_loss(images, pred, masking.mask)
    target = patchify(images, (8, 8))
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = per_patch[masking.mask.bool()].mean()
    torch.testing.assert_close(loss, expected)
    visible = masking.ids_keep[0, 0]
    masked = masking.mask[0].nonzero()[0, 0]
    changed_visible = pred.clone()
    changed_visible[0, visible] += 5.0
    assert model.forward_loss(images, changed_visible, masking.mask).item() == pytest.approx(loss.item())
    changed_masked = pred.clone()
    changed_masked[0, masked] += 5.0
    assert model.forward_loss(images, changed_masked, masking.mask).item() > loss.item() + 0.1


def test_norm_pix_target_is_normalised_per_patch():
    model = tiny_mae()
    model.config.norm_pix_loss = True
    target = model.target_patches(torch.rand(2, 1, 32, 48))
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 24), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 24), atol=1e-3, rtol=0)


def test_reconstruct_pastes_visible_patches_back():
    model = tiny_mae()
    images = torch.rand(2, 1, 32, 48)
    masking = masking_for(model, 2)
    recon = model.reconstruct(images, masking)
    assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    visible = ~masking.mask.bool()
    assert torch.equal(patchify(recon, (8, 8))[visible], patchify(images, (8, 8))[visible])
    shown = model.masked_images(images, masking.mask, fill=0.5)
    assert (patchify(shown, (8, 8))[~visible] == 0.5).all()
    assert torch.equal(patchify(shown, (8, 8))[visible], patchify(images, (8, 8))[visible])


def test_save_load_round_trip_and_encoder_export(tmp_path):
    model = tiny_mae(pos_embed="learned").eval()
    images = torch.rand(2, 1, 32, 48)
    masking = masking_for(model, 2)
    model.save_pretrained(tmp_path / "mae")
    loaded = MaskedAutoencoder.from_pretrained(tmp_path / "mae").eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(images, masking).pred, model(images, masking).pred)
    model.save_encoder(tmp_path / "encoder")
    for source in ("encoder", "mae"):  # an encoder folder, or the encoder inside an MAE folder
        encoder = VisionTransformer.from_pretrained(tmp_path / source).eval()
        assert torch.equal(encoder(images), model.encoder(images))
    with pytest.raises(CheckpointError, match="not a masked-autoencoder"):
        MaskedAutoencoder.from_pretrained(tmp_path / "encoder")


def test_from_pretrained_at_another_size(tmp_path):
    tiny_mae().save_pretrained(tmp_path)
    model = MaskedAutoencoder.from_pretrained(tmp_path, image_size=(48, 48), grad_checkpointing=True)
    assert model.num_patches == 36 and model.encoder.grad_checkpointing
    torch.testing.assert_close(model.decoder_pos_embed[0, 1:], sincos_pos_embed_2d(16, (6, 6)), rtol=0, atol=0)
    out = model(torch.rand(1, 1, 48, 48), masking_for(model, 1))
    assert out.pred.shape == (1, 36, 64) and torch.isfinite(out.loss)
    with pytest.raises(CheckpointError, match="bad override"):
        MaskedAutoencoder.from_pretrained(tmp_path, no_such_field=1)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = tiny_mae()
    checkpointed = tiny_mae(grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.rand(2, 1, 32, 48)
    masking = masking_for(plain, 2)
    for model in (plain, checkpointed):
        model(images, masking).loss.backward()
    for (name, param), other in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(other.grad, param.grad, msg=name)


@pytest.mark.parametrize("name", sorted(MAE_PRESETS))
def test_every_preset_runs_forward_and_backward(name):
    """Shapes for every preset on the meta device (no memory, no compute)."""
    config = mae_config(name)
    with torch.device("meta"):
        model = MaskedAutoencoder(config)
    masking = masking_for(model, 2).to("meta")
    images = torch.empty(2, 1, *config.encoder.image_size, device="meta")
    out = model(images, masking)
    patch_pixels = config.encoder.patch_size[0] * config.encoder.patch_size[1]
    assert out.pred.shape == (2, config.encoder.num_patches, patch_pixels) and out.loss.shape == ()
    out.loss.backward()
    assert all(param.grad is not None for param in model.parameters())


@pytest.mark.parametrize("name", ["mae-tiny-cpu", "mae-small-cpu"])
def test_cpu_presets_train_for_real(name):
    torch.manual_seed(0)
    config = mae_config(name)
    model = MaskedAutoencoder(config)
    grid = config.encoder.grid_size
    inside = torch.zeros(grid)
    inside[grid[0] // 4 : 3 * grid[0] // 4, grid[1] // 8 : 3 * grid[1] // 4] = 1.0
    masking = ContextAwareMasker()(2, config.encoder.num_patches, inside_fraction=inside.flatten().expand(2, -1))
    out = model(torch.rand(2, 1, *config.encoder.image_size), masking)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_hd_preset_matches_paper_size():
    with torch.device("meta"):
        reference_stem = MaskedAutoencoder(mae_config("hd-mae-vitl-1280"))
        linear_stem = MaskedAutoencoder(mae_config("hd-mae-vitl-1280", patch_embed="linear"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # ViT-L: 24 blocks × 12.6 M = 302.3 M + a 64·64 → 1024 patch projection (4.2 M); the paper
    # quotes ~304 M. The reference stem (16×16, 4×4 and 1×1 convs, 1024 wide) adds 13.9 M more.
    assert 306e6 < count(linear_stem.encoder) < 307e6
    assert count(reference_stem.encoder) - count(linear_stem.encoder) == pytest.approx(13.9e6, rel=0.01)
    assert reference_stem.encoder.config.num_patches == 400
    assert reference_stem.decoder_pred.out_features == 4096


@pytest.mark.slow
def test_hd_mae_forward_on_one_image():
    """The real 1280² model on one image with the reference rectangle (a few seconds on CPU)."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(mae_config("hd-mae-vitl-1280")).eval()
    masker = ContextAwareMasker()
    masking = masker(1, 400, inside_fraction=reference_chest_rectangle((20, 20))[None])
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda module, args, output: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 1280, 1280), masking)
    assert seen == [47] and out.pred.shape == (1, 400, 4096) and torch.isfinite(out.loss)
