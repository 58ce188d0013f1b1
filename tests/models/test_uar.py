"""UAR: the orthonormal basis, CRA, the triplet loss, TIR's mask, cached == uncached decoding with
the mask on, the LSU path through a dVAE, and save / load."""

from __future__ import annotations

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.dvae import DiscreteVAE, DiscreteVAEConfig
from cxrfm.models.report import ReportGenerator, load_report_generator, report_generator_config
from cxrfm.models.report.uar import (
    CrossModalAligner,
    UARConfig,
    UARGenerator,
    orthonormal_basis,
    triplet_loss,
    uar_config,
)

VOCAB, VISUAL, WIDTH = 30, 6, 16


def tiny_features_model(**overrides) -> UARGenerator:
    torch.manual_seed(0)
    config = uar_config("uar-tiny-cpu", VOCAB, VISUAL, visual="features", feature_dim=WIDTH, dropout=0.0,
                        visual_dropout=0.0, max_length=20, basis_size=48, **overrides)
    return UARGenerator(config).eval()


def reports(batch: int = 4, length: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (batch, length), generator=generator)
    tokens[:, 0] = 1
    tokens[:, -1] = 2
    return tokens


def test_basis_has_orthonormal_columns_when_taller_than_wide_and_rows_otherwise():
    tall = orthonormal_basis(2048, 64)
    assert tall.shape == (2048, 64)
    assert torch.allclose(tall.T @ tall, torch.eye(64), atol=1e-5)
    wide = orthonormal_basis(8, 64)
    assert torch.allclose(wide @ wide.T, torch.eye(8), atol=1e-5)
    assert torch.equal(orthonormal_basis(100, 16), orthonormal_basis(100, 16))  # fixed, not random per model


def test_aligner_is_token_wise_so_it_keeps_the_decoder_causal():
    torch.manual_seed(0)
    aligner = CrossModalAligner(16, 64, 4).eval()
    x = torch.randn(2, 5, 16)
    out = aligner(x)
    changed = x.clone()
    changed[:, 3] += 1.0
    out_changed = aligner(changed)
    assert out.shape == x.shape
    assert torch.allclose(out[:, :3], out_changed[:, :3]) and torch.allclose(out[:, 4:], out_changed[:, 4:])
    assert not torch.allclose(out[:, 3], out_changed[:, 3])
    # gamma / beta adjust the basis: both get gradients.
    out.sum().backward()
    assert aligner.gamma.grad.abs().sum() > 0 and aligner.beta.grad.abs().sum() > 0


def test_triplet_loss_is_zero_for_separated_pairs_and_positive_for_swapped_ones():
    eye = torch.eye(4)
    assert triplet_loss(eye, eye, margin=0.2) == 0  # positives 1, negatives 0
    swapped = eye[[1, 0, 3, 2]]
    # each image's own report is orthogonal, a negative is identical: 2 * (0.2 - 0 + 1) per pair
    assert triplet_loss(eye, swapped, margin=0.2).item() == pytest.approx(2.4)
    # a "negative" with the same report text is not a negative: nothing left to push apart
    same = torch.ones(4, 4, dtype=torch.bool)
    assert triplet_loss(eye, swapped, margin=0.2, same_report=same) == 0
    images = torch.randn(4, 8, requires_grad=True)
    triplet_loss(images, torch.randn(4, 8), margin=0.5).backward()
    assert images.grad.abs().sum() > 0


def test_refiner_mask_starts_without_effect_and_acts_once_it_varies():
    model = tiny_features_model(tir=True)
    features, tokens = torch.randn(3, VISUAL, WIDTH), reports(3)
    with torch.no_grad():
        on = model(tokens, features=features).logits
        model.refine = False
        off = model(tokens, features=features).logits
        # sigmoid(0) = 0.5 in every entry: a row constant the softmax ignores
        assert torch.allclose(on, off, atol=1e-5)
        assert model.mask_loss().item() == pytest.approx(0.5)  # the mean of 1 - sigmoid(0)
        model.refine = True
        model.refiner_mask.normal_(0, 3.0)
        assert not torch.allclose(model(tokens, features=features).logits, off, atol=1e-3)
        # only text-to-image attention changes: row 0 of the mask steers position 0 only
        before = model(tokens, features=features).logits
        model.refiner_mask[5:] += torch.randn_like(model.refiner_mask[5:])
        after = model(tokens, features=features).logits
        assert torch.allclose(before[:, :5], after[:, :5], atol=1e-5) and not torch.allclose(before[:, 5:], after[:, 5:])


def test_mask_loss_pushes_every_entry_up_alone():
    model = tiny_features_model(tir=True)
    model.mask_loss().backward()
    assert (model.refiner_mask.grad < 0).all()  # gradient descent raises every entry towards 1


def test_report_features_ignore_padding_and_teacher_forcing_is_causal():
    model = tiny_features_model()
    tokens = reports(2)
    padded = torch.cat([tokens, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(model.report_features(tokens), model.report_features(padded), atol=1e-5)
    features = torch.randn(2, VISUAL, WIDTH)
    logits = model(tokens, features=features).logits
    changed = tokens.clone()
    changed[:, 6] = 3 + (changed[:, 6] - 2) % (VOCAB - 3)
    logits_changed = model(changed, features=features).logits
    assert torch.allclose(logits[:, :6], logits_changed[:, :6], atol=1e-5)


SEARCHES = [dict(beam_size=1), dict(beam_size=3), dict(beam_size=3, no_repeat_ngram_size=2, length_penalty=1.0)]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_cached_and_uncached_decoding_agree_with_the_refiner_mask_on(search):
    model = tiny_features_model(tir=True)
    with torch.no_grad():
        model.refiner_mask.normal_(0, 2.0)  # a mask that really steers attention
        model.logits.bias[2] -= 2.0  # reports of a few tokens rather than <eos> at once
    features = torch.randn(4, VISUAL, WIDTH, generator=torch.Generator().manual_seed(3))
    cached = model.generate(features=features, max_length=15, use_cache=True, **search)
    uncached = model.generate(features=features, max_length=15, use_cache=False, **search)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.allclose(cached.scores, uncached.scores, atol=1e-4)
    assert (cached.sequences[:, 0] != 2).any()  # something was generated


def test_visual_padding_mask_is_kept_with_the_refiner_mask():
    model = tiny_features_model(tir=True)
    features = torch.randn(2, VISUAL, WIDTH)
    keep = torch.ones(2, VISUAL, dtype=torch.bool)
    keep[:, 3:] = False
    changed = features.clone()
    changed[:, 3:] = torch.randn(2, VISUAL - 3, WIDTH)
    tokens = reports(2)
    # masked visual tokens are never attended by the decoder: their values do not matter there
    states, mask = model.encode(features=features, feature_mask=keep)
    states_changed, _ = model.encode(features=changed, feature_mask=keep)
    a = model.decode(tokens, states, mask)
    b = model.decode(tokens, torch.cat([states[:, :3], states_changed[:, 3:]], 1), mask)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def dvae():
    torch.manual_seed(0)
    config = DiscreteVAEConfig(image_size=32, codebook_size=16, hidden_dim=8)
    return DiscreteVAE(config).eval()


def test_lsu_path_turns_each_view_into_dvae_tokens(dvae, tmp_path):
    from cxrfm.models.report.tokenizer import ReportTokenizer, TokenizerConfig

    tokenizer = ReportTokenizer.build(["heart normal", "lungs clear heart normal"], TokenizerConfig(min_frequency=1))
    model = UARGenerator.with_image_tokenizer(dvae, tokenizer, views=2, preset="uar-tiny-cpu", basis_size=32, max_length=12)
    assert model.config.num_visual_tokens == 2 * 16  # two views of (32 / 8)^2 tokens
    images = torch.rand(3, 2, 1, 32, 32)
    ids = model.visual_tokens(images)
    assert ids.shape == (3, 32) and ids.dtype == torch.long
    assert torch.equal(ids[:, :16], dvae.encode_tokens(images[:, 0]))
    tokens = tokenizer.batch_encode(["heart normal"] * 3)
    out = model(tokens[:, :-1], images=images, report_tokens=tokens)
    loss = out.logits.sum() + triplet_loss(out.image_features, out.report_features)
    loss.backward()
    assert all(p.grad is None for p in model.image_tokenizer.parameters())  # the dVAE stays frozen
    assert model.visual_embedding.weight.grad.abs().sum() > 0
    model.eval()
    before = model.generate(images=images, beam_size=2, max_length=8).sequences
    folder = model.save_pretrained(tmp_path / "uar")
    loaded = load_report_generator(folder)
    assert isinstance(loaded, UARGenerator) and loaded.refine
    assert torch.equal(loaded.generate(images=images, beam_size=2, max_length=8).sequences, before)


def test_loading_checks_the_model_type(tmp_path):
    r2gen = ReportGenerator(report_generator_config("r2gen-tiny-cpu", VOCAB))
    folder = r2gen.save_pretrained(tmp_path / "r2gen")
    with pytest.raises(CheckpointError, match="report-uar"):
        UARGenerator.from_pretrained(folder)
    assert isinstance(load_report_generator(folder), ReportGenerator)


def test_config_errors_name_the_field(dvae):
    with pytest.raises(ValueError, match="dvae"):
        UARConfig(vocab_size=VOCAB, num_visual_tokens=16, visual="tokens")
    with pytest.raises(ValueError, match="num_visual_tokens"):
        UARConfig(vocab_size=VOCAB, num_visual_tokens=15, visual="tokens", dvae=dvae.config)
    with pytest.raises(ValueError, match="feature_dim"):
        UARConfig(vocab_size=VOCAB, num_visual_tokens=4, visual="features")
    with pytest.raises(ValueError, match="cra_heads"):
        UARConfig(vocab_size=VOCAB, num_visual_tokens=4, visual="features", feature_dim=8, d_model=64, cra_heads=5)
