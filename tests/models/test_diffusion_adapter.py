"""DKIM: the controlled U-ViT starts as the frozen base exactly, only the adapter trains, the base
stays frozen and in eval mode, and base + adapter save and load together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.adapter import ControlledUViT, DiseaseAdapter
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig

CONFIG = UViTConfig(**UVIT_PRESETS["uvit-tiny-cpu"], latent_size=8, context_length=4, context_dim=16)


def inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, CONFIG.in_channels, CONFIG.latent_size, CONFIG.latent_size, generator=generator)
    context = torch.randn(batch, CONFIG.context_length, CONFIG.context_dim, generator=generator)
    hint = torch.randn(batch, CONFIG.context_length, CONFIG.context_dim, generator=generator)
    return latents, context, hint


def trained_base(seed: int = 0) -> UViT:
    """A U-ViT whose weights are not the init (stands in for the stage-one denoiser)."""
    torch.manual_seed(seed)
    base = UViT(CONFIG)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return base.eval()


def one_adapter_step(model: ControlledUViT) -> None:
    latents, context, hint = inputs(seed=1)
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    loss = F.mse_loss(model(latents, torch.tensor([10, 500]), context, hint), torch.randn_like(latents))
    loss.backward()
    optimiser.step()
    model.eval()


@pytest.mark.parametrize("timesteps", [torch.tensor([0, 0]), torch.tensor([1, 999]), torch.tensor([250.5, 731.25]), 500])
def test_at_initialisation_the_controlled_model_is_the_base_exactly(timesteps):
    base = trained_base()
    model = ControlledUViT(base)
    latents, context, hint = inputs()
    with torch.no_grad():
        assert torch.equal(model(latents, timesteps, context, hint), base(latents, timesteps, context))


def test_the_adapter_starts_as_a_trainable_copy_of_the_frozen_base():
    base = trained_base().requires_grad_(False)  # a frozen base must still give a trainable copy
    adapter = DiseaseAdapter.from_base(base)
    for part in ("embedding", "in_blocks", "mid_block"):
        copied, original = getattr(adapter, part).state_dict(), getattr(base, part).state_dict()
        assert copied.keys() == original.keys()
        assert all(torch.equal(copied[name], original[name]) for name in original)
    assert all(p.requires_grad for p in adapter.parameters()) and adapter.training
    zero_layers = [adapter.hint_projection, adapter.middle_projection, *adapter.skip_projections]
    assert len(zero_layers) == 2 + CONFIG.depth // 2
    assert all(not p.any() for layer in zero_layers for p in layer.parameters())
    # the copy does not share storage with the base
    assert adapter.embedding.pos_embed.data_ptr() != base.embedding.pos_embed.data_ptr()


def test_only_the_adapter_trains_and_the_base_stays_frozen_in_eval_mode():
    base = trained_base()
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = ControlledUViT(base)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.adapter.parameters()}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "adapter." + name for name, _ in model.adapter.named_parameters()
    }
    model.train()
    assert model.training and model.adapter.training
    assert not base.training and not any(module.training for module in base.modules())

    latents, context, hint = inputs()
    with torch.no_grad():
        initial = model(latents, 300, context, hint)
    one_adapter_step(model)
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(tensor, before[name]) for name, tensor in base.state_dict().items())
    with torch.no_grad():
        assert not torch.allclose(model(latents, 300, context, hint), initial)
        assert torch.equal(base(latents, 300, context), initial)  # the base alone is unchanged


def test_save_and_load_round_trip_base_and_adapter(tmp_path):
    model = ControlledUViT(trained_base())
    one_adapter_step(model)  # non-zero residual layers, so the adapter's weights matter
    loaded = ControlledUViT.from_pretrained(model.save_pretrained(tmp_path / "dkim"))
    assert loaded.config == model.config
    latents, context, hint = inputs(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(latents, 42, context, hint), model(latents, 42, context, hint))
    assert not any(p.requires_grad for p in loaded.base.parameters())
    assert all(p.requires_grad for p in loaded.adapter.parameters())
    assert not loaded.train().base.training


def test_plain_uvit_folder_or_wrong_model_type_is_a_checkpoint_error(tmp_path):
    folder = trained_base().save_pretrained(tmp_path / "uvit")
    with pytest.raises(CheckpointError, match="plain U-ViT"):
        ControlledUViT.from_pretrained(folder)
    (folder / "config.json").write_text('{"model_type": "dvae"}')
    with pytest.raises(CheckpointError, match="not a uvit-dkim checkpoint"):
        ControlledUViT.from_pretrained(folder)


def test_mismatched_hint_or_adapter_is_refused():
    model = ControlledUViT(trained_base())
    latents, context, hint = inputs()
    with pytest.raises(ValueError, match="hint"):
        model(latents, 10, context, hint[:, :-1])
    other = UViTConfig(**{**UVIT_PRESETS["uvit-tiny-cpu"], "latent_size": 8, "context_length": 4, "context_dim": 8})
    with pytest.raises(ValueError, match="adapter config"):
        ControlledUViT(trained_base(), DiseaseAdapter(other))
