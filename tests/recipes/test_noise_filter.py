"""LNFS end to end on small phantoms with planted noise.

The latents here are the phantoms' pixels average-pooled 8x (``(1, 8, 8)`` from 64 x 64 images),
standing in for the Diff-CXR autoencoder's latents (``benchmarks/lnfs_planted.py --encoder
pooled``): the recipe only sees ``(N, C, h, w)`` tensors, so the stages, files and decisions are
tested without an autoencoder. One fit (a few seconds) is shared by most tests.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cxrfm.config import from_dict
from cxrfm.data.corruptions import PlantedCorruptions
from cxrfm.data.registry import DatasetSpec, build_dataset
from cxrfm.errors import ConfigError
from cxrfm.pipelines.noise_filter import LatentNoiseFilter
from cxrfm.recipes.diff_cxr.noise_filter import SCORE_COLUMNS, NoiseFilterSection, run_noise_filter

ITEMS = 240
KINDS = ("blank", "inverted", "heavy_noise")


def small_section(**changes) -> NoiseFilterSection:
    return NoiseFilterSection(**{"num_clusters": 4, "reconstructor_steps": 150, "discriminator_steps": 80, **changes})


@pytest.fixture(scope="module")
def planted_latents():
    dataset = PlantedCorruptions(build_dataset(DatasetSpec(kind="phantom", num_samples=ITEMS), "train", (64, 64)), 0.05, KINDS, seed=0)
    images = torch.stack([dataset[i].image for i in range(ITEMS)])
    kinds = [dataset.kind_of(i) for i in range(ITEMS)]
    latents = torch.nn.functional.avg_pool2d(images, 8)  # (N, 1, 8, 8): the autoencoder's stand-in
    return latents, images, [f"phantom-{i}" for i in range(ITEMS)], kinds


@pytest.fixture(scope="module")
def fitted(planted_latents, tmp_path_factory):
    latents, images, ids, kinds = planted_latents
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("lnfs") / "filter"
        return run_noise_filter(latents, ids, small_section(), out, images=images, item_notes=kinds), out
    finally:
        torch.set_num_threads(previous)


def test_planted_blank_inverted_and_noisy_items_rank_above_clean_ones(fitted, planted_latents):
    result, _ = fitted
    kinds = np.array([k or "clean" for k in planted_latents[3]])
    combined = result.scores["combined"]
    clean = combined[kinds == "clean"]
    for kind in ("blank", "inverted"):
        assert combined[kinds == kind].min() > clean.max(), kind
        assert result.scores["removed"][kinds == kind].all(), kind  # and the default threshold removes them
    # Heavy noise is mostly averaged away by 8x pooling; it still scores in the clean items' top tail.
    assert combined[kinds == "heavy_noise"].min() > np.quantile(clean, 0.9)
    assert result.scores["removed"][kinds == "clean"].mean() <= 0.02


def test_outputs_are_written_and_describe_the_run(fitted):
    result, out = fitted
    for name in ("reconstructor/config.json", "reconstructor/model.safetensors", "discriminator/model.safetensors", "filter.json",
                 "scores.csv", "kept.txt", "removed.txt", "removed.png", "training/reconstructor/metrics.jsonl"):
        assert (out / name).is_file(), name
    record = json.loads((out / "filter.json").read_text())
    assert record["threshold"] == result.threshold == 3.0 and record["removal"] == {"rule": "threshold", "value": 3.0}
    assert record["counts"] == result.counts and record["settings"]["num_clusters"] == 4
    assert result.counts["typical_noisy"] == round(0.03 * ITEMS) and result.counts["removed"] == len(result.removed_ids)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert tuple(rows[0]) == SCORE_COLUMNS and len(rows) == ITEMS
    assert [r["id"] for r in rows if r["removed"] == "1"] == result.removed_ids
    assert sum(r["typical"] == "normal" for r in rows) == result.counts["typical_normal"]


def test_kept_and_removed_lists_partition_the_ids(fitted, planted_latents):
    result, out = fitted
    ids = planted_latents[2]
    assert set(result.kept_ids).isdisjoint(result.removed_ids)
    assert sorted(result.kept_ids + result.removed_ids) == sorted(ids)
    assert (out / "kept.txt").read_text().splitlines() == result.kept_ids == [i for i in ids if i not in set(result.removed_ids)]
    assert (out / "removed.txt").read_text().splitlines() == result.removed_ids


def test_the_pipeline_reproduces_the_recipes_scores_from_the_saved_folder(fitted, planted_latents):
    result, out = fitted
    latents = planted_latents[0]
    noise_filter = LatentNoiseFilter.from_pretrained(out)
    scores = noise_filter.score(latents, progress=False)
    for name in ("reconstruction_error", "discriminator_probability", "combined"):
        np.testing.assert_allclose(scores[name], result.scores[name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert np.array_equal(noise_filter.is_noisy(latents), result.scores["removed"])
    assert noise_filter.threshold == result.threshold


def test_remove_fraction_removes_that_share_and_a_rerun_replaces_the_folder(planted_latents, tmp_path):
    latents, _, ids, _ = planted_latents
    out = tmp_path / "filter"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    result = run_noise_filter(latents, ids, small_section(remove_fraction=0.1, reconstructor_steps=40, discriminator_steps=20), out)
    assert result.counts["removed"] == round(0.1 * ITEMS) == len((out / "removed.txt").read_text().splitlines())
    assert not (out / "stale.txt").exists() and not (out / "removed.png").exists()  # no images given: no figure
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((out / "filter.json").read_text())["removal"] == {"rule": "fraction", "value": 0.1}


@pytest.mark.parametrize("changes, field", [
    ({"typical_normal_fraction": 1.5}, "typical_normal_fraction"),
    ({"typical_noisy_fraction": 0.0}, "typical_noisy_fraction"),
    ({"num_clusters": 0}, "num_clusters"),
    ({"min_cluster_share": 0.5}, "min_cluster_share"),
    ({"lr": -1.0}, "lr"),
    ({"combination": "median"}, "combination"),
    ({"reconstruction_weight": 2.0}, "reconstruction_weight"),
    ({"threshold": 2.0, "remove_fraction": 0.1}, "remove_fraction"),
    ({"remove_fraction": 1.0}, "remove_fraction"),
    ({"reconstructor_steps": 0}, "reconstructor_steps"),
])
def test_bad_settings_raise_errors_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        NoiseFilterSection(**changes)
    with pytest.raises(ConfigError, match=field):  # as a run config section
        from_dict(NoiseFilterSection, changes, prefix="noise_filter")


def test_bad_inputs_fail_before_any_work_naming_what_is_wrong(planted_latents, tmp_path):
    latents, _, ids, _ = planted_latents
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="num_clusters"):
        run_noise_filter(latents[:3], ids[:3], small_section(), out)
    with pytest.raises(ConfigError, match="typical_noisy_fraction"):
        run_noise_filter(latents[:10], ids[:10], small_section(typical_noisy_fraction=0.01), out)
    with pytest.raises(ValueError, match="unique"):
        run_noise_filter(latents[:8], ["same"] * 8, small_section(), out)
    with pytest.raises(ValueError, match="item_ids"):
        run_noise_filter(latents, ids[:-1], small_section(), out)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        run_noise_filter(latents[:, 0], ids, small_section(), out)
    with pytest.raises(ValueError, match="images"):
        run_noise_filter(latents, ids, small_section(), out, images=torch.zeros(2, 1, 64, 64))
    assert not out.exists()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match="output_dir"):
        run_noise_filter(latents, ids, small_section(), tmp_path / "a-file" / "filter")
