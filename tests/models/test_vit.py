"""ViT encoder: shapes, token selection, block splitting, init, resizing, save/load, checkpointing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.layers import sincos_pos_embed_2d
from cxrfm.models.vit import VIT_PRESETS, VisionTransformer, ViTConfig, vit_config


def tiny_config(**overrides) -> ViTConfig:
    base = dict(image_size=(32, 48), patch_size=(8, 8), embed_dim=32, depth=3, num_heads=4)
    return ViTConfig(**{**base, **overrides})


def test_config_grid_and_validation():
    config = tiny_config()
    assert config.grid_size == (4, 6) and config.num_patches == 24
    assert ViTConfig(image_size=[64, 32], patch_size=[16, 8]).image_size == (64, 32)
    with pytest.raises(ValueError, match=r"image_size \(100, 64\) is not divisible by patch_size \(16, 16\)"):
        ViTConfig(image_size=(100, 64), patch_size=(16, 16))
    with pytest.raises(ValueError, match="num_heads"):
        ViTConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="vit-huge"):
        vit_config("vit-huge")
    assert vit_config("vit-l-64-1280", patch_embed="linear").patch_embed == "linear"
    assert VIT_PRESETS["vit-l-64-1280"].patch_embed == "conv_stem"  # overrides never touch presets


def test_wrong_image_size_names_both_sizes():
    model = VisionTransformer(tiny_config())
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 48\), got \(2, 1, 48, 32\)"):
        model(torch.rand(2, 1, 48, 32))


@pytest.mark.parametrize("class_token", [True, False])
def test_forward_shapes(class_token):
    model = VisionTransformer(tiny_config(class_token=class_token))
    images = torch.rand(2, 1, 32, 48)
    prefix = 1 if class_token else 0
    assert model(images).shape == (2, prefix + 24, 32)
    ids_keep = torch.tensor([[0, 5, 23], [7, 1, 2]])
    assert model.forward_features(images, ids_keep).shape == (2, prefix + 3, 32)


def test_position_embeddings_added_before_selection():
    model = VisionTransformer(tiny_config())
    images = torch.rand(2, 1, 32, 48)
    ids_keep = torch.tensor([[3, 17, 9], [22, 0, 11]])
    everything = model.embed(images)  # (B, 1 + N, D)
    selected = model.embed(images, ids_keep)
    expected = torch.gather(everything[:, 1:], 1, ids_keep[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(selected[:, 1:], expected)
    torch.testing.assert_close(selected[:, :1], everything[:, :1])
    # Selected tokens keep their own grid position: token 17 carries pos_embed[17], not pos_embed[1].
    patch_only = model.patch_embed(images)
    torch.testing.assert_close(selected[0, 2] - patch_only[0, 17], model.pos_embed[0, 1 + 17])


def test_encoder_blocks_see_only_kept_tokens():
    model = VisionTransformer(tiny_config())
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    model(torch.rand(2, 1, 32, 48), torch.randint(0, 24, (2, 5)))
    assert seen == [torch.Size([2, 6, 32])]


def test_forward_blocks_split_equals_full_run():
    model = VisionTransformer(tiny_config()).eval()
    tokens = model.embed(torch.rand(2, 1, 32, 48))
    split = model.forward_blocks(model.forward_blocks(tokens, 0, 2), 2)
    torch.testing.assert_close(model.norm(split), model.norm(model.forward_blocks(tokens)))


def test_init_follows_mae():
    torch.manual_seed(0)
    model = VisionTransformer(tiny_config(embed_dim=64, depth=2))
    qkv = model.blocks[0].attn.qkv
    bound = math.sqrt(6 / (64 + 192))
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.9 * bound
    assert torch.equal(qkv.bias, torch.zeros(192))
    assert torch.equal(model.norm.weight, torch.ones(64)) and torch.equal(model.norm.bias, torch.zeros(64))
    patch_weight = model.patch_embed.proj.weight  # (64, 1, 8, 8) treated as a (64, 64) linear map
    assert patch_weight.abs().max() <= math.sqrt(6 / (64 + 64))
    assert 0.01 < model.cls_token.std().item() < 0.03
    # Sin-cos positions are fixed and not saved; learned ones are parameters.
    assert not isinstance(model.pos_embed, torch.nn.Parameter)
    assert "pos_embed" not in model.state_dict()
    learned = VisionTransformer(tiny_config(pos_embed="learned"))
    assert isinstance(learned.pos_embed, torch.nn.Parameter) and learned.no_weight_decay() == {"cls_token", "pos_embed"}


def test_sincos_pos_embed_values():
    model = VisionTransformer(tiny_config())
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_pos_embed_2d(32, (4, 6)))


@pytest.mark.parametrize("overrides", [{}, {"pos_embed": "learned"}, {"patch_embed": "conv_stem", "class_token": False}])
def test_save_load_round_trip(tmp_path, overrides):
    model = VisionTransformer(tiny_config(**overrides)).eval()
    images = torch.rand(2, 1, 32, 48)
    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["model_type"] == "vit" and record["image_size"] == [32, 48]
    assert ("pos_embed" in load_file(tmp_path / "model.safetensors")) == (overrides.get("pos_embed") == "learned")
    loaded = VisionTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_from_pretrained_other_size_sincos_is_exact(tmp_path):
    VisionTransformer(tiny_config()).save_pretrained(tmp_path)
    resized = VisionTransformer.from_pretrained(tmp_path, image_size=(64, 40))
    assert resized.config.grid_size == (8, 5)
    torch.testing.assert_close(resized.pos_embed[0, 1:], sincos_pos_embed_2d(32, (8, 5)), rtol=0, atol=0)
    assert resized(torch.rand(1, 1, 64, 40)).shape == (1, 41, 32)


def test_from_pretrained_other_size_interpolates_learned(tmp_path):
    model = VisionTransformer(tiny_config(pos_embed="learned"))
    model.save_pretrained(tmp_path)
    resized = VisionTransformer.from_pretrained(tmp_path, image_size=(64, 96), drop_path_rate=0.1)
    assert resized.pos_embed.shape == (1, 1 + 8 * 12, 32)
    torch.testing.assert_close(resized.pos_embed[:, 0], model.pos_embed[:, 0])  # class token kept
    # Bicubic 2× upsampling keeps the overall level of each channel.
    torch.testing.assert_close(
        resized.pos_embed[0, 1:].mean(0), model.pos_embed[0, 1:].mean(0), atol=0.02, rtol=0
    )
    assert resized.config.drop_path_rate == 0.1
    assert resized(torch.rand(1, 1, 64, 96)).shape == (1, 97, 32)


def test_resize_pos_embed_in_place():
    model = VisionTransformer(tiny_config())
    model.resize_pos_embed((2, 3))
    assert model.config.image_size == (16, 24)
    assert model(torch.rand(1, 1, 16, 24)).shape == (1, 7, 32)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        VisionTransformer.from_pretrained(tmp_path)
    VisionTransformer(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        VisionTransformer.from_pretrained(tmp_path, mlp_ratio=2.0)
    with pytest.raises(CheckpointError, match="missing blocks.3"):
        VisionTransformer.from_pretrained(tmp_path, depth=4)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        VisionTransformer.from_pretrained(tmp_path)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = VisionTransformer(tiny_config())
    checkpointed = VisionTransformer(tiny_config(grad_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.rand(2, 1, 32, 48)
    ids_keep = torch.tensor([[1, 4, 9, 20], [0, 2, 3, 23]])
    for model in (plain, checkpointed):
        model(images, ids_keep).square().mean().backward()
    for (name, param), other in zip(plain.named_parameters(), checkpointed.parameters()):
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(other.grad, param.grad, msg=name)


def test_build_encoder_builds_presets_and_resizes_pretrained_folders(tmp_path):
    from cxrfm.errors import ConfigError
    from cxrfm.models.vit import build_encoder

    torch.manual_seed(0)
    random = build_encoder(None, "vit-tiny-cpu", {"depth": 2, "patch_size": [8, 8]}, image_size=(32, 48), drop_path_rate=0.1)
    assert random.config.depth == 2 and random.config.image_size == (32, 48) and random.config.drop_path_rate == 0.1
    random.save_pretrained(tmp_path / "vit")
    resized = build_encoder(tmp_path / "vit", image_size=(64, 64))
    assert resized.config.image_size == (64, 64) and resized.config.depth == 2
    same = build_encoder(tmp_path / "vit")
    for name, value in random.state_dict().items():
        assert torch.equal(same.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="model.encoder_overrides"):
        build_encoder(None, "vit-tiny-cpu", {"no_such_field": 1})
