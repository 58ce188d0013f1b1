"""Feature extractors for the image-generation metrics: a saved cxrfm encoder, a TorchScript
Inception stand-in and a saved classifier turn (N, 1, H, W) images into (N, D) arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfm.data.sample import CXRSample, collate_samples
from cxrfm.errors import CheckpointError
from cxrfm.models.classify import ClassifierConfig, build_classifier
from cxrfm.models.vit import VisionTransformer, vit_config
from cxrfm.pipelines.classification import save_classifier
from cxrfm.pipelines.image_features import (
    ClassifierProbabilities,
    EncoderFeatures,
    InceptionFeatures,
)

LABELS = ("Cardiomegaly", "Pleural Effusion")


def tiny_encoder_config():
    return vit_config("vit-tiny-cpu", image_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=2, num_heads=2)


@pytest.fixture
def encoder_dir(tmp_path):
    torch.manual_seed(0)
    VisionTransformer(tiny_encoder_config()).save_pretrained(tmp_path / "mae-run" / "encoder")
    return tmp_path / "mae-run" / "encoder"


def test_encoder_features_are_mean_pooled_patch_tokens_batch_invariant_and_deterministic(encoder_dir):
    extractor = EncoderFeatures.from_pretrained(encoder_dir, device="cpu")
    assert extractor.name == "cxrfm-vit (mae-run/encoder)"
    images = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    features = extractor(images, batch_size=2)
    assert features.shape == (5, 32) and features.dtype == np.float64 and np.isfinite(features).all()
    encoder = VisionTransformer.from_pretrained(encoder_dir).eval()
    with torch.no_grad():
        expected = encoder(images)[:, 1:].mean(dim=1).numpy()  # class token left out of the mean
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extractor(images, batch_size=5), features, rtol=1e-5, atol=1e-6)  # batching
    np.testing.assert_array_equal(extractor(images, batch_size=2), features)  # determinism
    reloaded = EncoderFeatures.from_pretrained(encoder_dir, device="cpu")
    np.testing.assert_array_equal(reloaded(images, batch_size=2), features)
    # An iterable of batches (tensors or collated samples) gives the same rows.
    samples = [CXRSample(image=image) for image in images]
    batches = [images[:3], collate_samples(samples[3:])]
    np.testing.assert_allclose(extractor(batches, progress=True), features, rtol=1e-5, atol=1e-6)


def test_encoder_features_at_another_size(encoder_dir):
    images = torch.rand(3, 1, 48, 48)
    resized = EncoderFeatures.from_pretrained(encoder_dir, device="cpu")(images)  # images resized to 32²
    assert resized.shape == (3, 32)
    at_48 = EncoderFeatures.from_pretrained(encoder_dir, image_size=(48, 48), device="cpu")
    assert at_48.image_size == (48, 48) and at_48(images).shape == (3, 32)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        at_48(torch.rand(3, 3, 48, 48))


class InceptionStandIn(torch.nn.Module):
    """Same call signature as NVlabs' inception-2015-12-05.pt (the real file cannot be downloaded
    here): ``model(img, return_features=True)``. Its "features" record what it was given: the
    mean pixel, the input shape and whether the input was uint8."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        batch = img.shape[0]
        is_uint8 = 1.0 if img.dtype == torch.uint8 else 0.0
        described = torch.tensor([float(img.shape[1]), float(img.shape[2]), float(img.shape[3]), is_uint8])
        channel_means = img.float().mean(dim=(2, 3))  # (B, 3)
        features = torch.cat([channel_means, described.unsqueeze(0).expand(batch, -1)], dim=1)
        return features if return_features else features.sum(dim=1, keepdim=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inception_features_feed_uint8_rgb_299_to_a_torchscript_file(tmp_path):
    path = tmp_path / "inception-stand-in.pt"
    torch.jit.script(InceptionStandIn()).save(str(path))
    extractor = InceptionFeatures(path, device="cpu")
    assert extractor.name == "inception (inception-stand-in.pt)"
    images = torch.full((3, 1, 64, 48), 0.5)
    images[1] = 1.2  # clamped to 255
    features = extractor(images, batch_size=2)
    assert features.shape == (3, 7)
    np.testing.assert_array_equal(features[:, 3:], [[3, 299, 299, 1]] * 3)
    # Grey to three equal channels; 64 x 48 is padded (aspect kept) with black to 299 x 299.
    assert np.allclose(features[:, 0], features[:, 1]) and np.allclose(features[:, 0], features[:, 2])
    assert features[1, 0] > features[0, 0] and features[1, 0] <= 255 * 48 / 64 + 1


def test_inception_features_refuse_a_missing_or_non_torchscript_file(tmp_path):
    with pytest.raises(CheckpointError, match="inception-2015-12-05.pt.*never downloads"):
        InceptionFeatures(tmp_path / "inception-2015-12-05.pt")
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, state_dict)
    with pytest.raises(CheckpointError, match=r"state_dict\.pt.*not a TorchScript"):
        InceptionFeatures(state_dict)


def test_classifier_probabilities_match_the_classification_pipeline(tmp_path):
    torch.manual_seed(0)
    config = ClassifierConfig(kind="vtb", label_names=LABELS, encoder=tiny_encoder_config(), label_embedding="learned", label_embedding_dim=16)
    model = build_classifier(config).eval()
    save_classifier(model, tmp_path / "classifier", np.array([0.5, 0.5]))
    scorer = ClassifierProbabilities.from_pretrained(tmp_path / "classifier", device="cpu")
    assert scorer.label_names == LABELS and scorer.name == "classifier (classifier)"
    images = torch.rand(5, 1, 32, 32)
    probabilities = scorer(images, batch_size=2)
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).double().numpy()
    assert probabilities.shape == (5, 2) and ((probabilities > 0) & (probabilities < 1)).all()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert scorer(torch.rand(2, 1, 64, 64)).shape == (2, 2)  # resized to the classifier's 32²
