"""Per-label heatmaps: shapes, and that they follow where a synthetic finding is."""

from __future__ import annotations

import functools

import pytest
import torch

from cxrfm.models.classify import ClassifierConfig, build_classifier, weighted_bce
from cxrfm.figures.heatmaps import save_heatmap_figure
from cxrfm.models.classify.explain import label_heatmaps, pooled_gradcam, vtb_attention_rollout
from cxrfm.models.vit import vit_config

GRID = 4  # 32x32 images, 8x8 patches


def blob_images(positions: list[tuple[int, int] | None], generator: torch.Generator) -> torch.Tensor:
    """Noisy grey images with a bright 8x8 square at patch ``(row, col)`` (None: no square)."""
    images = 0.3 + 0.05 * torch.randn(len(positions), 1, 32, 32, generator=generator)
    for index, position in enumerate(positions):
        if position is not None:
            row, col = position
            images[index, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 0.6
    return images.clamp(0, 1)


def random_batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    has_blob = torch.rand(size, generator=generator) < 0.5
    cells = torch.randint(0, GRID, (size, 2), generator=generator)
    positions = [tuple(cell.tolist()) if blob else None for cell, blob in zip(cells, has_blob)]
    labels = torch.stack([has_blob.float(), (~has_blob).float()], dim=1)  # "Nodule", "No Finding"
    return blob_images(positions, generator), labels


@functools.cache
def trained_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    encoder = vit_config("vit-tiny-cpu", image_size=(32, 32), patch_size=(8, 8), embed_dim=32, depth=2, num_heads=2)
    config = ClassifierConfig(kind=kind, label_names=("Nodule", "No Finding"), encoder=encoder, label_embedding="learned",
                              label_embedding_dim=16, logit_batchnorm=True)
    model = build_classifier(config)
    optimizer = torch.optim.AdamW(model.param_groups(0.0, 3e-3))
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        images, labels = random_batch(32, generator)
        loss = weighted_bce(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", params=["vtb", "finetune"])
def model(request):
    return trained_model(request.param)


def test_heatmaps_peak_where_the_finding_is(model):
    generator = torch.Generator().manual_seed(1)
    corners = [(0, 0), (0, 3), (3, 0), (3, 3), (1, 2)]
    images = blob_images(corners, generator)
    probabilities = model.predict_proba(images)
    assert (probabilities[:, 0] > 0.5).all()  # the model learnt to see the square
    maps = vtb_attention_rollout(model, images) if model.config.kind == "vtb" else pooled_gradcam(model, images)
    assert maps.shape == (len(corners), 2, GRID, GRID)
    nodule = maps[:, 0].flatten(1)
    peaks = [divmod(int(index), GRID) for index in nodule.argmax(dim=1)]
    assert peaks == corners


def test_label_heatmaps_are_image_sized_in_unit_range_and_drawn(model, tmp_path):
    generator = torch.Generator().manual_seed(2)
    images, labels = random_batch(3, generator)
    heatmaps, probabilities = label_heatmaps(model, images)
    assert heatmaps.shape == (3, 2, 32, 32) and probabilities.shape == (3, 2)
    assert heatmaps.min() >= 0 and heatmaps.amax(dim=(-2, -1)).allclose(torch.ones(3, 2))
    assert not model.training
    path = save_heatmap_figure(tmp_path / "figures" / "heatmaps.png", images, heatmaps, probabilities, model.label_names, labels)
    assert path.stat().st_size > 5_000


def test_plain_rollout_is_available_and_differs_from_the_gradient_weighted_one():
    model = trained_model("vtb")
    images = blob_images([(0, 0), None], torch.Generator().manual_seed(3))
    plain = vtb_attention_rollout(model, images, weighting="none")
    weighted = vtb_attention_rollout(model, images)
    assert plain.shape == weighted.shape == (2, 2, GRID, GRID)
    # Plain rollout ignores the logits; the default weights every block by their gradients.
    assert not torch.allclose(plain, weighted)
    with pytest.raises(ValueError, match="weighting"):
        vtb_attention_rollout(model, images, weighting="bogus")
