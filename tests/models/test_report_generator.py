"""R2Gen report generator: relational memory, MCLN, forward/backward with 1 and 2 views, loss,
save/load, parameter groups, construction from a pretrained ViT."""

from __future__ import annotations

import json

import pytest
import torch

from cxrfm.models.report.tokenizer import ReportTokenizer, TokenizerConfig
from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.models.report.memory import ConditionalLayerNorm, RelationalMemory
from cxrfm.models.report.r2gen import (
    ReportGenerator,
    ReportGeneratorConfig,
    report_generator_config,
    report_loss,
)
from cxrfm.models.vit import VisionTransformer, ViTConfig

VIT = ViTConfig(image_size=(32, 32), patch_size=(16, 16), embed_dim=32, depth=1, num_heads=4)
TRAIN = ["The heart is normal. The lungs are clear.", "No pleural effusion. Heart size is normal."] * 2


def tiny(vocab_size=30, **overrides) -> ReportGenerator:
    torch.manual_seed(0)
    return ReportGenerator(report_generator_config("r2gen-tiny-cpu", vocab_size, **overrides))


def random_tokens(batch, length, vocab_size=30, generator=None):
    tokens = torch.randint(3, vocab_size, (batch, length), generator=generator)
    tokens[:, 0] = 1
    return tokens


def test_default_config_is_r2gen():
    config = report_generator_config("r2gen", 764)
    assert (config.d_model, config.num_heads, config.d_ff) == (512, 8, 512)
    assert (config.num_encoder_layers, config.num_decoder_layers) == (3, 3)
    assert (config.memory_slots, config.memory_heads, config.visual_dropout, config.max_length) == (3, 8, 0.5, 60)
    model = ReportGenerator(config)
    assert model.visual_projection[0].in_features == 1024 and model.visual_projection[2].p == 0.5
    assert model.decoder_layers[0].ffn_norm.delta_gamma[0].in_features == 3 * 512
    with pytest.raises(ConfigError, match="unknown report preset"):
        report_generator_config("r2gen-huge", 10)
    with pytest.raises(ValueError, match="feature_dim"):
        ReportGeneratorConfig(vocab_size=10)


def test_relational_memory_recurrence_and_initial_state():
    torch.manual_seed(0)
    memory = RelationalMemory(num_slots=3, d_model=8, num_heads=2).eval()
    state = memory.initial_state(2)
    assert state.shape == (2, 24)
    assert torch.equal(state[0].view(3, 8), torch.eye(3, 8))
    embeddings = torch.randn(2, 5, 8)
    states = memory(embeddings, state)
    assert states.shape == (2, 5, 24)
    # Stepping one token at a time gives the same states (what cached decoding relies on).
    stepped = state
    for t in range(5):
        stepped = memory.step(embeddings[:, t], stepped)
        torch.testing.assert_close(stepped, states[:, t])
    # The state depends on the tokens read: changing token 3 changes states 3.. only.
    changed = embeddings.clone()
    changed[:, 3] += 1.0
    other = memory(changed, state)
    assert torch.equal(other[:, :3], states[:, :3]) and not torch.allclose(other[:, 3:], states[:, 3:])


def test_conditional_layer_norm_uses_memory():
    torch.manual_seed(0)
    norm = ConditionalLayerNorm(d_model=6, memory_size=12)
    x = torch.randn(2, 4, 6)
    out_a, out_b = norm(x, torch.zeros(2, 4, 12)), norm(x, torch.randn(2, 4, 12))
    assert out_a.shape == (2, 4, 6) and not torch.allclose(out_a, out_b)
    # With Δ-MLPs zeroed it is a plain layer norm.
    for mlp in (norm.delta_gamma, norm.delta_beta):
        torch.nn.init.zeros_(mlp[2].weight), torch.nn.init.zeros_(mlp[2].bias)
    torch.testing.assert_close(norm(x, torch.randn(2, 4, 12)), torch.nn.functional.layer_norm(x, (6,), eps=1e-6))


def test_forward_backward_on_features_and_padding_is_ignored():
    model = tiny()
    features, tokens = torch.randn(2, 10, 32), random_tokens(2, 7)
    logits = model(tokens, features=features)
    assert logits.shape == (2, 7, 30)
    loss = model.loss(tokens, features=features)
    loss.backward()
    assert torch.isfinite(loss) and model.visual_projection[0].weight.grad.abs().sum() > 0
    assert model.memory.input_gates.weight.grad.abs().sum() > 0
    # The loss over padded targets equals the loss over the unpadded ones.
    model.eval()
    padded = torch.cat([tokens, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model.loss(padded, features=features), model.loss(tokens, features=features))
    uniform = report_loss(torch.zeros(1, 2, 30), torch.tensor([[5, 0]]), pad_id=0)
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(30.0)).item())


def test_decoder_is_causal():
    model = tiny().eval()
    features, tokens = torch.randn(1, 10, 32), random_tokens(1, 6)
    changed = tokens.clone()
    changed[0, 4] = 7 if tokens[0, 4] != 7 else 8
    a, b = model(tokens, features=features), model(changed, features=features)
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_feature_mask_hides_padded_tokens():
    model = tiny().eval()
    features, tokens = torch.randn(1, 10, 32), random_tokens(1, 5)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    noisy = features.clone()
    noisy[:, 6:] = 100.0
    torch.testing.assert_close(
        model(tokens, features=features, feature_mask=mask), model(tokens, features=noisy, feature_mask=mask)
    )
    torch.testing.assert_close(
        model(tokens, features=features[:, :6]), model(tokens, features=features, feature_mask=mask)
    )
    with pytest.raises(ValueError, match="feature_mask"):
        model(tokens, features=features, feature_mask=torch.zeros(1, 10, dtype=torch.bool))


@pytest.mark.parametrize("views", [1, 2])
def test_forward_backward_with_vit_encoder(views):
    model = tiny(feature_dim=None, encoder=VIT)
    images = torch.rand(2, views, 1, 32, 32)
    features = model.extract_features(images)
    assert features.shape == (2, views * (1 + 4), 32)  # class token + 2×2 patches per view
    tokens = random_tokens(2, 6)
    assert model(tokens, images=images).shape == (2, 6, 30)
    model.loss(tokens, images=images).backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    if views == 1:  # (B, C, H, W) is one view
        model.eval()
        torch.testing.assert_close(model(tokens, images=images[:, 0]), model(tokens, images=images))
    with pytest.raises(ValueError, match="exactly one of"):
        model(tokens)


def test_save_and_load_give_identical_outputs(tmp_path):
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=1))
    config = report_generator_config("r2gen-tiny-cpu", len(tokenizer), feature_dim=None, encoder=VIT)
    torch.manual_seed(0)
    model = ReportGenerator(config, tokenizer).eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["model_type"] == "report-r2gen" and record["encoder"]["embed_dim"] == 32
    loaded = ReportGenerator.from_pretrained(tmp_path).eval()
    assert loaded.tokenizer.vocabulary == tokenizer.vocabulary and loaded.config == config
    images, tokens = torch.rand(2, 2, 1, 32, 32), tokenizer.batch_encode(TRAIN[:2])
    assert torch.equal(model(tokens, images=images), loaded(tokens, images=images))
    assert loaded.generate_text(images=images, max_length=8) == model.generate_text(images=images, max_length=8)
    (tmp_path / "config.json").write_text(json.dumps({**record, "model_type": "vit"}))
    with pytest.raises(CheckpointError, match="not a report-r2gen"):
        ReportGenerator.from_pretrained(tmp_path)


def test_from_encoder_copies_pretrained_vit(tmp_path):
    torch.manual_seed(1)
    VisionTransformer(VIT).save_pretrained(tmp_path / "vit")
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=1))
    model = ReportGenerator.from_encoder(tmp_path / "vit", tokenizer, image_size=(48, 32), preset="r2gen-tiny-cpu")
    vit = VisionTransformer.from_pretrained(tmp_path / "vit", image_size=(48, 32))
    assert model.config.encoder.image_size == (48, 32) and model.config.vocab_size == len(tokenizer)
    images = torch.rand(1, 1, 48, 32)
    torch.testing.assert_close(model.extract_features(images), vit.forward_features(images))


def test_param_groups_split_encoder_and_decoder():
    model = tiny(feature_dim=None, encoder=VIT)
    groups = model.param_groups(lr_encoder=5e-5, lr_decoder=1e-4, weight_decay=5e-5)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    assert by_name["encoder"]["lr"] == 5e-5 and by_name["decoder"]["lr"] == 1e-4
    assert by_name["decoder_no_decay"]["weight_decay"] == 0.0 and by_name["decoder"]["weight_decay"] == 5e-5
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in by_name["encoder"]["params"] + by_name["encoder_no_decay"]["params"]} == encoder_ids
    assert id(model.encoder.cls_token) in {id(p) for p in by_name["encoder_no_decay"]["params"]}
    torch.optim.Adam(groups, amsgrad=True)  # the groups are valid optimiser input


def test_training_step_reduces_loss_on_one_batch():
    tokenizer = ReportTokenizer.build(TRAIN, TokenizerConfig(min_frequency=1))
    torch.manual_seed(0)
    model = ReportGenerator(report_generator_config("r2gen-tiny-cpu", len(tokenizer), dropout=0.0, visual_dropout=0.0))
    optimizer = torch.optim.Adam(model.param_groups(1e-3, 3e-3, 0.0))
    features, tokens = torch.randn(2, 8, 32), tokenizer.batch_encode(TRAIN[:2])
    losses = []
    for _ in range(30):
        loss = model.loss(tokens, features=features)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    # After overfitting, greedy decoding reproduces the training reports.
    texts = [tokenizer.decode(row) for row in model.generate(features=features, beam_size=1).sequences]
    assert texts == [tokenizer.reference_text(r) for r in TRAIN[:2]]


def test_visual_norm_standardises_each_token_position_over_the_batch():
    # ViT tokens share a large per-position component across images; the batch norm removes it,
    # so what reaches the decoder is what differs between images.
    from cxrfm.models.report import ReportGenerator, report_generator_config

    config = report_generator_config("r2gen-tiny-cpu", 12, feature_dim=8, visual_norm="batch", num_visual_tokens=5)
    model = ReportGenerator(config).train()
    shared = torch.randn(1, 5, 8) * 10  # the same for every image
    features = shared + 0.1 * torch.randn(16, 5, 8)
    normed = model.visual_norm(features.flatten(1)).view_as(features)
    assert normed.mean(0).abs().max() < 1e-4 and (normed.std(0, unbiased=False) - 1).abs().max() < 1e-2  # eps 1e-5
    model.eval()
    tokens = torch.ones(2, 3, dtype=torch.long)
    assert model(tokens, features=features[:2]).shape == (2, 3, 12)
    with pytest.raises(ValueError, match="visual_norm expects 5 tokens"):
        model(tokens, features=features[:2, :4])
    with pytest.raises(ValueError, match="num_visual_tokens"):
        report_generator_config("r2gen-tiny-cpu", 12, feature_dim=8, visual_norm="batch")
