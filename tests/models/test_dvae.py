"""The discrete VAE: token shapes and range, the relaxed path's gradients, save / load, bad configs."""

from __future__ import annotations

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.dvae import DiscreteVAE, DiscreteVAEConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DiscreteVAE(DiscreteVAEConfig(image_size=32, codebook_size=16, hidden_dim=8, embedding_dim=8)).eval()


def test_tokens_are_one_code_per_8x8_patch_and_decode_back_to_an_image(model):
    images = torch.rand(3, 1, 32, 32)
    tokens = model.encode_tokens(images)
    assert tokens.shape == (3, 16) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16
    decoded = model.decode_tokens(tokens)
    assert decoded.shape == (3, 1, 32, 32) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    # hard decoding = the relaxed decoder on exact one-hots
    one_hot = torch.nn.functional.one_hot(tokens.view(3, 4, 4), 16).permute(0, 3, 1, 2).float()
    assert torch.allclose(decoded, torch.sigmoid(model.decode_codes(one_hot)))


def test_relaxed_pass_gives_gradients_to_encoder_codebook_and_decoder(model):
    model.train()
    output = model(torch.rand(2, 1, 32, 32), temperature=0.5)
    output.loss.backward()
    for part in (model.encoder, model.codebook, model.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert output.kl >= -1e-6  # KL to the uniform prior is never negative
    model.zero_grad()
    model.eval()


def test_save_and_load_give_identical_tokens(model, tmp_path):
    images = torch.rand(2, 1, 32, 32)
    loaded = DiscreteVAE.from_pretrained(model.save_pretrained(tmp_path / "dvae"))
    assert torch.equal(loaded.encode_tokens(images), model.encode_tokens(images))
    (tmp_path / "dvae" / "config.json").write_text('{"model_type": "report-uar"}')
    with pytest.raises(CheckpointError, match="dvae"):
        DiscreteVAE.from_pretrained(tmp_path / "dvae")


def test_bad_input_and_config_name_the_field(model):
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        model.encode_tokens(torch.rand(2, 1, 40, 40))
    with pytest.raises(ValueError, match="divisible"):
        DiscreteVAEConfig(image_size=100)
    with pytest.raises(ValueError, match="codebook_size"):
        DiscreteVAEConfig(codebook_size=0)
    with pytest.raises(ValueError, match="downsample"):
        DiscreteVAEConfig(downsample=16)
