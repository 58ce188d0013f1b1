"""LNFS's latent networks: shapes for any latent size, gradients, no path around the bottleneck,
save / load, bad configs."""

from __future__ import annotations

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.noise_filter import (
    LatentDiscriminator,
    LatentDiscriminatorConfig,
    LatentReconstructor,
    LatentReconstructorConfig,
)

RECONSTRUCTORS = {
    "default": LatentReconstructorConfig(),
    "tiny-1ch": LatentReconstructorConfig(in_channels=1, hidden_channels=8, depth=1, bottleneck_channels=2, norm_groups=4),
    "deep": LatentReconstructorConfig(in_channels=4, hidden_channels=8, depth=3, bottleneck_channels=4, norm_groups=2),
}
DISCRIMINATORS = {
    "default": LatentDiscriminatorConfig(),
    "tiny-1ch": LatentDiscriminatorConfig(in_channels=1, hidden_channels=8, depth=2, norm_groups=4, dropout=0.1),
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", list(RECONSTRUCTORS))
@pytest.mark.parametrize("grid", [(8, 8), (7, 9), (32, 32)])
def test_reconstructor_keeps_the_latent_shape_and_trains(name, grid):
    torch.manual_seed(0)
    config = RECONSTRUCTORS[name]
    model = LatentReconstructor(config)
    latents = torch.randn(3, config.in_channels, *grid)
    output = model(latents)
    assert output.shape == latents.shape
    ((output - latents) ** 2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    errors = model.reconstruction_error(latents)
    assert errors.shape == (3,) and (errors >= 0).all()


@pytest.mark.parametrize("name", list(RECONSTRUCTORS))
def test_reconstructor_output_depends_on_the_input_only_through_the_bottleneck(name):
    # No U-Net skips: forward is the decoder of the bottleneck code and nothing else, and the code
    # is 2**depth times smaller on each side.
    torch.manual_seed(0)
    config = RECONSTRUCTORS[name]
    model = LatentReconstructor(config).eval()
    latents = torch.randn(2, config.in_channels, 16, 16)
    code = model.encode(latents)
    side = 16 // 2**config.depth
    assert code.shape == (2, config.bottleneck_channels, side, side)
    assert torch.equal(model(latents), model.decoder(code)[..., :16, :16])


@pytest.mark.parametrize("name", list(DISCRIMINATORS))
@pytest.mark.parametrize("grid", [(8, 8), (5, 11)])
def test_discriminator_gives_one_logit_per_latent_and_trains(name, grid):
    torch.manual_seed(0)
    config = DISCRIMINATORS[name]
    model = LatentDiscriminator(config)
    logits = model(torch.randn(4, config.in_channels, *grid))
    assert logits.shape == (4,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 0.0, 1.0])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cls, config", [(LatentReconstructor, RECONSTRUCTORS["tiny-1ch"]), (LatentDiscriminator, DISCRIMINATORS["tiny-1ch"])])
def test_save_and_load_give_identical_outputs(cls, config, tmp_path):
    torch.manual_seed(0)
    model = cls(config).eval()
    latents = torch.randn(2, config.in_channels, 8, 8)
    loaded = cls.from_pretrained(model.save_pretrained(tmp_path / "net")).eval()
    assert loaded.config == config
    assert torch.equal(loaded(latents), model(latents))


def test_loading_the_other_network_or_a_wrong_type_is_a_checkpoint_error(tmp_path):
    folder = LatentReconstructor(RECONSTRUCTORS["tiny-1ch"]).save_pretrained(tmp_path / "reconstructor")
    with pytest.raises(CheckpointError, match="lnfs-discriminator"):
        LatentDiscriminator.from_pretrained(folder)
    (folder / "config.json").write_text('{"model_type": "lnfs-reconstructor", "depth": 0}')
    with pytest.raises(CheckpointError, match="depth"):
        LatentReconstructor.from_pretrained(folder)


def test_bad_configs_and_inputs_name_the_field():
    with pytest.raises(ValueError, match="norm_groups"):
        LatentReconstructorConfig(hidden_channels=12, norm_groups=8)
    with pytest.raises(ValueError, match="depth"):
        LatentReconstructorConfig(depth=0)
    with pytest.raises(ValueError, match="bottleneck_channels"):
        LatentReconstructorConfig(bottleneck_channels=-1)
    with pytest.raises(ValueError, match="dropout"):
        LatentDiscriminatorConfig(dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        LatentReconstructor(LatentReconstructorConfig())(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        LatentDiscriminator(DISCRIMINATORS["tiny-1ch"])(torch.randn(8, 8))
