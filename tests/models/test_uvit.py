"""The U-ViT denoiser: every preset's forward, backward and save / load; residual injection;
input and config errors naming the field; analytic FLOPs against torch's FLOP counter."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig, UViTResiduals, timestep_embedding
from cxrfm.models.flops import uvit_flops_per_image

# Small latents and a short, narrow context keep even U-ViT-S/2 at a second or two on CPU.
LATENT, CONTEXT_LENGTH, CONTEXT_DIM = 8, 4, 16


def small_config(preset: str = "uvit-tiny-cpu", **overrides) -> UViTConfig:
    fields = dict(UVIT_PRESETS[preset], latent_size=LATENT, context_length=CONTEXT_LENGTH, context_dim=CONTEXT_DIM)
    return UViTConfig(**{**fields, **overrides})


def inputs(config: UViTConfig, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, config.in_channels, config.latent_size, config.latent_size, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    context = torch.randn(batch, config.context_length, config.context_dim, generator=generator)
    return latents, timesteps, context


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UViT(small_config()).eval()


@pytest.fixture(scope="module", params=sorted(UVIT_PRESETS))
def preset_model(request):
    # Built once per preset: U-ViT-S/2 (44 M parameters) takes ~2 s just to initialise on 2 cores.
    torch.manual_seed(0)
    return UViT(small_config(request.param))


def test_every_preset_predicts_latent_shaped_noise_and_backward_reaches_every_parameter(preset_model):
    latents, timesteps, context = inputs(preset_model.config, batch=1)
    eps = preset_model(latents, timesteps, context)
    assert eps.shape == latents.shape
    eps.square().mean().backward()
    no_grad = [name for name, p in preset_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    preset_model.zero_grad(set_to_none=True)
    assert not no_grad, f"no gradient reaches {no_grad}"


def test_every_preset_round_trips_through_save_pretrained(preset_model, tmp_path):
    preset_model.eval()
    loaded = UViT.from_pretrained(preset_model.save_pretrained(tmp_path / "uvit"))
    assert loaded.config == preset_model.config
    latents, timesteps, context = inputs(preset_model.config, batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(latents, timesteps, context), preset_model(latents, timesteps, context))


def test_presets_keep_their_architecture_and_let_the_caller_pick_the_latent_size():
    paper = UViTConfig(**UVIT_PRESETS["uvit-s-2"])  # U-ViT-S/2 on 4x32x32 latents (256² images)
    assert (paper.embed_dim, paper.depth, paper.num_heads, paper.mlp_ratio, paper.patch_size) == (512, 12, 8, 4.0, 2)
    assert (paper.latent_size, paper.in_channels, paper.num_patches, paper.num_tokens) == (32, 4, 256, 1 + 77 + 256)
    for preset in UVIT_PRESETS.values():
        assert "latent_size" not in preset
    model = UViT(small_config())
    assert len(model.in_blocks) == len(model.out_blocks) == len(model.skip_linears) == 2  # depth 4: 2 + mid + 2


def test_float_and_scalar_timesteps(tiny):
    latents, _, context = inputs(tiny.config)
    with torch.no_grad():
        as_float = tiny(latents, torch.tensor([250.5, 250.5]), context)
        assert as_float.shape == latents.shape
        assert torch.equal(tiny(latents, 250.5, context), as_float)  # one scalar for the whole batch
    with pytest.raises(ValueError, match="timesteps"):
        tiny(latents, torch.zeros(3), context)


def test_timestep_embedding_is_cos_then_sin():
    embedding = timestep_embedding(torch.tensor([0.0, 7.0]), 6)
    assert embedding.shape == (2, 6)
    assert torch.equal(embedding[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(embedding[1, 0], torch.cos(torch.tensor(7.0))) and torch.allclose(embedding[1, 3], torch.sin(torch.tensor(7.0)))
    assert timestep_embedding(torch.tensor([3.0]), 5)[0, -1] == 0  # odd width: zero last channel


def test_zero_residuals_equal_no_residuals_and_others_change_the_output(tiny):
    latents, timesteps, context = inputs(tiny.config)
    tokens = tiny.embed(latents, timesteps, context)
    assert tokens.shape == (2, tiny.config.num_tokens, tiny.config.embed_dim)
    zeros = UViTResiduals(skips=[torch.zeros_like(tokens) for _ in tiny.in_blocks], middle=torch.zeros_like(tokens))
    with torch.no_grad():
        plain = tiny(latents, timesteps, context)
        assert torch.equal(tiny(latents, timesteps, context, zeros), plain)
        nudged = UViTResiduals(skips=zeros.skips, middle=torch.randn_like(tokens))
        assert not torch.allclose(tiny(latents, timesteps, context, nudged), plain)
    with pytest.raises(ValueError, match="one per in-block"):
        tiny(latents, timesteps, context, UViTResiduals(skips=zeros.skips[:1], middle=zeros.middle))


def test_wrong_context_or_latent_shapes_raise(tiny):
    latents, timesteps, context = inputs(tiny.config)
    with pytest.raises(ValueError, match="context_length"):
        tiny(latents, timesteps, context[:, :-1])
    with pytest.raises(ValueError, match="context_dim"):
        tiny(latents, timesteps, torch.randn(2, CONTEXT_LENGTH, CONTEXT_DIM + 1))
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        tiny(torch.randn(2, 4, 16, 16), timesteps, context)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (dict(latent_size=10, patch_size=4), "latent_size"),
        (dict(embed_dim=30, num_heads=4), "embed_dim"),
        (dict(depth=3), "depth"),
        (dict(depth=0), "depth"),
        (dict(mlp_ratio=0.0), "mlp_ratio"),
        (dict(qkv_bias="yes"), "qkv_bias"),
        (dict(conv_out=1), "conv_out"),
        (dict(context_length=0), "context_length"),
        (dict(context_dim=-3), "context_dim"),
        (dict(patch_size=1.5), "patch_size"),
    ],
)
def test_bad_config_fields_are_named(fields, named):
    with pytest.raises(ValueError, match=named):
        UViTConfig(**fields)


def test_wrong_model_type_or_bad_config_json_is_a_checkpoint_error(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "uvit")
    record = json.loads((folder / "config.json").read_text())
    assert record["model_type"] == "uvit"
    (folder / "config.json").write_text(json.dumps({**record, "model_type": "dvae"}))
    with pytest.raises(CheckpointError, match="not a uvit checkpoint"):
        UViT.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**record, "depth": 3}))
    with pytest.raises(CheckpointError, match="depth"):
        UViT.from_pretrained(folder)


def count_flops(model: UViT) -> int:
    # FlopCounterMode counts matmul and conv multiply-adds as 2 FLOPs and skips LayerNorm, softmax,
    # GELU and adds, as flops.py does. On CPU it does not see inside the fused SDPA kernel, so the
    # math backend is forced: the attention products then show up as bmm and are counted too.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs(model.config, batch=1))
    return counter.get_total_flops()


def test_analytic_flops_match_torchs_flop_counter(preset_model):
    config = preset_model.config
    assert count_flops(preset_model) == pytest.approx(uvit_flops_per_image(config), rel=0.01)
    assert uvit_flops_per_image(config, context_length=2 * CONTEXT_LENGTH) > uvit_flops_per_image(config)


def test_analytic_flops_without_the_final_conv():
    config = small_config(conv_out=False)
    assert count_flops(UViT(config)) == pytest.approx(uvit_flops_per_image(config), rel=0.01)
    with_conv = small_config()
    assert uvit_flops_per_image(with_conv) - uvit_flops_per_image(config) == 2 * 4 * 4 * 9 * LATENT**2
