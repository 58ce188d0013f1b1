"""Diff-CXR's KL autoencoder: every preset's encode / decode shapes and range, backward, save / load;
the latent scaling factor; config, input and checkpoint errors naming the field or file."""

from __future__ import annotations

import json

import pytest
import torch

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, CXRAutoencoder, build_autoencoder

SIZE = 32  # 32² -> 4 x 4 x 4 latents: even SD's kl-f8 widths (84 M parameters) run in about a second


@pytest.fixture(scope="module", params=sorted(AUTOENCODER_PRESETS))
def preset_model(request):
    torch.manual_seed(0)
    return build_autoencoder(request.param, SIZE)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_autoencoder("kl-f8-tiny-cpu", SIZE).eval()


def images(batch: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_preset_encodes_8x_to_4_channels_and_decodes_back_into_the_unit_range(preset_model):
    model = preset_model.eval()
    with torch.no_grad():
        latents = model.encode(images())
        decoded = model.decode(latents)
    assert latents.shape == (2, 4, SIZE // 8, SIZE // 8) == (2, *model.config.latent_shape)
    assert torch.isfinite(latents).all()
    assert decoded.shape == (2, 1, SIZE, SIZE)
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0


def test_every_preset_training_pass_gives_a_finite_loss_and_gradients_to_every_parameter(preset_model):
    model = preset_model.train()
    model.zero_grad()
    output = model(images())
    assert output.reconstruction.shape == (2, 1, SIZE, SIZE)
    reconstruction = output.reconstruction.detach()
    assert 0.0 <= float(reconstruction.min()) and float(reconstruction.max()) <= 1.0
    assert float(output.kl.detach()) >= 0.0 and float(output.l1.detach()) > 0.0
    torch.testing.assert_close(output.loss, output.l1 + model.config.kl_weight * output.kl)
    output.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.vae.encoder.conv_in.weight.grad.abs().sum() > 0 and model.vae.decoder.conv_out.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()


def test_every_preset_save_and_load_round_trip_is_exact(preset_model, tmp_path):
    model = preset_model.eval()
    loaded = CXRAutoencoder.from_pretrained(model.save_pretrained(tmp_path / "ae")).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        latents = model.encode(images())
        assert torch.equal(loaded.encode(images()), latents)
        assert torch.equal(loaded.decode(latents), model.decode(latents))


def test_scaling_factor_multiplies_encoded_latents_and_decode_divides_it_back(tiny, tmp_path):
    x = images()
    with torch.no_grad():
        mean = tiny.posterior(x).mode()  # unscaled posterior mean
        assert torch.equal(tiny.encode(x), mean * tiny.config.scaling_factor)
        unscaled_decode = tiny.decode(mean)
        scaled = build_autoencoder("kl-f8-tiny-cpu", SIZE, scaling_factor=0.25)
        scaled.load_state_dict(tiny.state_dict())
        scaled.eval()
        torch.testing.assert_close(scaled.encode(x), mean * 0.25)
        torch.testing.assert_close(scaled.decode(mean * 0.25), unscaled_decode, rtol=1e-5, atol=1e-6)
        # The recipe sets the factor after training; it is saved with the model.
        loaded = CXRAutoencoder.from_pretrained(scaled.save_pretrained(tmp_path / "scaled"))
        assert loaded.config.scaling_factor == 0.25
        torch.testing.assert_close(loaded.encode(x), mean * 0.25)


def test_posterior_sampling_follows_the_generator_and_other_sizes_run(tiny):
    x = images()
    with torch.no_grad():  # convolutional: any side divisible by 8
        assert tiny.encode(images(1, 48)).shape == (1, 4, 6, 6) and tiny.decode(torch.zeros(1, 4, 6, 5)).shape == (1, 1, 48, 40)
    with torch.no_grad():
        first = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        again = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        other = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, tiny.encode(x))  # the mean is not a sample


@pytest.mark.parametrize("fields, field", [
    (dict(block_out_channels=(16, 32, 32)), "block_out_channels"),
    (dict(block_out_channels=(16, 32, 32, 32, 32)), "block_out_channels"),
    (dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=6), "norm_num_groups"),
    (dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, image_size=36), "image_size"),
    (dict(image_size=0), "image_size"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(layers_per_block=1.5), "layers_per_block"),
    (dict(kl_weight=-1e-6), "kl_weight"),
    (dict(scaling_factor=0.0), "scaling_factor"),
    (dict(scaling_factor=float("nan")), "scaling_factor"),
])
def test_bad_config_fields_raise_value_errors_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        AutoencoderConfig(**fields)


def test_unknown_preset_and_bad_inputs_raise_value_errors(tiny):
    with pytest.raises(ValueError, match="kl-f8-tiny-cpu"):  # lists the known presets
        build_autoencoder("kl-f16", SIZE)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        tiny.encode(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        tiny.encode(torch.rand(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny.encode(torch.rand(1, 1, 36, 32))


def test_a_folder_of_another_model_type_is_a_checkpoint_error_naming_the_folder(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "ae")
    record = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**record, "model_type": "uvit"}))
    with pytest.raises(CheckpointError, match="cxr-autoencoder") as error:
        CXRAutoencoder.from_pretrained(folder)
    assert "ae" in str(error.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        CXRAutoencoder.from_pretrained(tmp_path / "nowhere")
