"""Diff-CXR's text side on the real packaged MiniLM (local files, no network; loaded once a module):
report states and their padding, the information squeeze on and off, InfoNCE, the CXR-CLIP pair's
save / load, and errors naming the field or shape."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.classify.label_embedding import load_sentence_encoder
from cxrfm.models.diffusion.text import (
    LOGIT_SCALE,
    ImageTower,
    InformationSqueeze,
    ReportEncoder,
    ReportEncoderConfig,
    ReportImageContrast,
    info_nce,
)
from cxrfm.models.vit import VisionTransformer, vit_config

REPORTS = [
    "Cardiomegaly.",
    "Moderate left pleural effusion. The heart is enlarged. There is no pneumothorax. The osseous structures are intact.",
    "The lungs are clear. No pleural effusion.",
]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ReportEncoder(ReportEncoderConfig()).eval()


@pytest.fixture(scope="module")
def states(encoder):
    return encoder.report_states(REPORTS)


def token_counts(reports: list[str]) -> list[int]:
    tokenizer, _ = load_sentence_encoder()
    return [len(tokenizer(report, truncation=True, max_length=256)["input_ids"]) for report in reports]


def test_report_states_are_pooled_feature_then_token_states_then_zeros(states):
    assert states.shape == (3, 257, 384) and states.dtype == torch.float32 and states.device.type == "cpu"
    lengths = token_counts(REPORTS)
    assert lengths[0] < lengths[2] < lengths[1] <= 256  # padding below happens for reports 0 and 2
    for index, length in enumerate(lengths):
        tokens = states[index, 1 : 1 + length]
        assert (tokens.abs().sum(-1) > 0).all()  # every real token has a state
        assert torch.equal(states[index, 1 + length :], torch.zeros(256 - length, 384))  # zeros at padding
        torch.testing.assert_close(states[index, 0], tokens.mean(0), rtol=1e-5, atol=1e-6)  # masked mean


def test_a_reports_states_do_not_depend_on_its_batch_companions(encoder, states):
    alone = encoder.report_states([REPORTS[0]])
    torch.testing.assert_close(alone[0], states[0], rtol=1e-4, atol=1e-5)
    one_at_a_time = encoder.report_states(REPORTS, batch_size=1)
    torch.testing.assert_close(one_at_a_time, states, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(states[0, 0], states[2, 0])  # different reports, different features


def test_squeeze_on_gives_77_condition_tokens_and_off_passes_the_256_token_states(encoder, states):
    retrieval, condition = encoder(states)
    assert retrieval.shape == (3, 384) and condition.shape == (3, 77, 384) and encoder.config.context_length == 77
    assert torch.isfinite(condition).all()
    plain = ReportEncoder(ReportEncoderConfig(squeeze=False))
    assert plain.squeeze is None and not list(plain.parameters()) and plain.config.context_length == 256
    retrieval, condition = plain(states)
    assert condition.shape == (3, 256, 384)
    assert torch.equal(retrieval, states[:, 0]) and torch.equal(condition, states[:, 1:])
    narrow = ReportEncoder(ReportEncoderConfig(condition_tokens=5))
    assert narrow(states)[1].shape == (3, 5, 384)


def test_encode_runs_report_states_and_the_squeeze(encoder, states):
    retrieval, condition = encoder.encode(REPORTS)
    expected_retrieval, expected_condition = encoder(states)
    torch.testing.assert_close(retrieval, expected_retrieval, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(condition, expected_condition, rtol=1e-4, atol=1e-5)


def test_the_squeeze_is_trainable_and_mixes_tokens():
    torch.manual_seed(0)
    squeeze = InformationSqueeze(9, 4, 16)
    x = torch.randn(2, 9, 16, requires_grad=True)
    out = squeeze(x)
    assert out.shape == (2, 4, 16) and float(out.detach().min()) >= 0  # ends in a ReLU
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in squeeze.parameters())
    assert (x.grad[:, -1].abs().sum(-1) > 0).all()  # the last input token reaches the outputs


def test_info_nce_is_low_for_matched_embeddings_and_has_the_closed_form_for_orthogonal_ones():
    count = 8
    embeddings = torch.eye(count, 16)  # unit rows, orthogonal
    matched = info_nce(embeddings, 3.0 * embeddings)  # scale does not matter: cosine logits
    expected = -math.log(math.exp(LOGIT_SCALE) / (math.exp(LOGIT_SCALE) + count - 1))  # ~4e-6: below float32's reach
    assert float(matched) == pytest.approx(expected, abs=1e-6)
    at_scale_one = info_nce(embeddings, embeddings, logit_scale=1.0)
    assert float(at_scale_one) == pytest.approx(-math.log(math.e / (math.e + count - 1)), rel=1e-5)
    generator = torch.Generator().manual_seed(0)
    random = info_nce(torch.randn(count, 16, generator=generator), torch.randn(count, 16, generator=generator))
    assert float(matched) < 1e-3 < float(random)
    swapped = info_nce(embeddings, embeddings.roll(1, dims=0))  # every pair mismatched
    assert float(swapped) > float(random)
    # Symmetric: swapping the towers gives the same value.
    a, b = torch.randn(count, 16, generator=generator), torch.randn(count, 16, generator=generator)
    torch.testing.assert_close(info_nce(a, b), info_nce(b, a))


def tiny_contrast(squeeze: bool = True) -> ReportImageContrast:
    torch.manual_seed(0)
    vit = VisionTransformer(vit_config("vit-tiny-cpu", image_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=1, num_heads=2))
    report_encoder = ReportEncoder(ReportEncoderConfig(squeeze=squeeze, condition_tokens=7))
    return ReportImageContrast(report_encoder, ImageTower(vit, report_encoder.config.width)).eval()


@pytest.mark.parametrize("squeeze", [True, False])
def test_report_image_contrast_save_and_load_round_trip_is_exact(states, tmp_path, squeeze):
    model = tiny_contrast(squeeze)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image_embeddings, text_embeddings = model(images, states)
    assert image_embeddings.shape == text_embeddings.shape == (3, 384)
    loaded = ReportImageContrast.from_pretrained(model.save_pretrained(tmp_path / "clip")).eval()
    assert loaded.config == model.config and loaded.report_encoder.config.condition_tokens == 7
    with torch.no_grad():
        again = loaded(images, states)
        assert torch.equal(again[0], image_embeddings) and torch.equal(again[1], text_embeddings)
        assert torch.equal(loaded.report_encoder(states)[1], model.report_encoder(states)[1])


def test_report_image_contrast_backward_reaches_both_towers(states):
    model = tiny_contrast().train()
    loss = info_nce(*model(torch.rand(3, 1, 32, 32), states))
    loss.backward()
    for tower in (model.report_encoder, model.image_tower):
        assert all(p.grad is not None for p in tower.parameters() if p.requires_grad)
        assert any(p.grad.abs().sum() > 0 for p in tower.parameters() if p.requires_grad)


def test_report_encoder_save_and_load_and_wrong_model_type(encoder, states, tmp_path):
    folder = encoder.save_pretrained(tmp_path / "text")
    loaded = ReportEncoder.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(loaded(states)[1], encoder(states)[1])
    record = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**record, "model_type": "report-image-contrast"}))
    with pytest.raises(CheckpointError, match="report-encoder"):
        ReportEncoder.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="report-image-contrast"):
        ReportImageContrast.from_pretrained(tiny_contrast().report_encoder.save_pretrained(tmp_path / "only-text"))


def test_bad_shapes_and_config_fields_raise(encoder, states):
    with pytest.raises(ValueError, match=r"\(B, 257, 384\)"):
        encoder(states[:, 1:])  # the pooled row left out
    with pytest.raises(ValueError, match=r"\(B, 257, 384\)"):
        encoder(states[0])
    with pytest.raises(ValueError, match=r"\(B, 257, 384\)"):
        encoder(states[..., :256])
    with pytest.raises(ValueError, match="kernel_size"):
        ReportEncoderConfig(kernel_size=2)
    with pytest.raises(ValueError, match="condition_tokens"):
        ReportEncoderConfig(condition_tokens=0)
    with pytest.raises(ValueError, match="max_tokens"):
        ReportEncoderConfig(max_tokens=-1)
    with pytest.raises(CheckpointError, match="width 384"):  # the packaged MiniLM is 384 wide
        ReportEncoder(ReportEncoderConfig(width=256)).report_states(["Cardiomegaly."])
