"""``cxrfm pretrain`` on the shipped tiny config (shortened), then ``--resume``."""

from __future__ import annotations

import argparse
import json

import pytest

from cxrfm.cli import pretrain as pretrain_cli
from cxrfm.config import load_config
from cxrfm.configs import resolve_config_path
from cxrfm.errors import ConfigError
from cxrfm.recipes.pretrain import PretrainConfig, resolve_image_size


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    pretrain_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["pretrain", *argv])
    return args.func(args)


@pytest.mark.parametrize("name", ["mae-tiny-phantom", "mae-small-realdata", "hd-mae-vitl-1280"])
def test_shipped_configs_load_strictly(name):
    config = load_config(PretrainConfig, resolve_config_path(name))
    assert resolve_image_size(config) == {"mae-tiny-phantom": (128, 128), "mae-small-realdata": (256, 256), "hd-mae-vitl-1280": (1280, 1280)}[name]
    assert config.masking.kind == "context"


def test_hd_config_follows_the_paper():
    config = load_config(PretrainConfig, resolve_config_path("hd-mae-vitl-1280"))
    assert (config.masking.ratio_inside, config.masking.ratio_outside) == (0.95, 0.85)
    assert config.train.batch_size == 1024 and config.train.base_lr == 2.5e-4 and config.train.lr is None
    assert config.train.peak_lr() == pytest.approx(1e-3)
    assert config.train.weight_decay == 0.04 and config.train.clip_grad == 3.0 and config.train.precision == "bf16"


def test_cli_trains_the_tiny_phantom_config_and_resumes(tmp_path):
    out = tmp_path / "tiny"
    common = [
        "--config", "mae-tiny-phantom",
        "--set", f"train.output_dir={out}",
        "--set", "data.sources.phantom.num_samples=16",
        "--set", "train.batch_size=4",
        "--set", "train.warmup_steps=1",
        "--set", "train.checkpoint_every=2",
        "--set", "train.log_every=1",
        "--set", "train.figure_every=0",
        "--set", "train.figure_samples=2",
        "--set", "train.progress_bar=false",
        "--set", "train.tensorboard=false",
    ]
    assert _run([*common, "--set", "train.max_steps=3"]) == 0
    assert (out / "encoder" / "model.safetensors").is_file()
    assert (out / "figures" / "reconstruction_step_0000003.png").is_file()
    with pytest.raises(ConfigError, match="resume"):
        _run([*common, "--set", "train.max_steps=3"])
    assert _run([*common, "--set", "train.max_steps=5", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000005"


@pytest.mark.realdata
def test_small_realdata_config_trains_on_the_shared_data(tmp_path, shared_data_dir):
    from cxrfm.recipes.pretrain import build_pretrain_dataset, run_pretraining

    overrides = [
        f"data.sources.openist.root={shared_data_dir / 'lung_seg_openist'}",
        f"data.sources.covid.root={shared_data_dir / 'covid_chestxray'}",
        "data.sources.openist.cache=false",
        "data.sources.covid.cache=false",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.figure_samples=2",
        "train.progress_bar=false",
        "train.tensorboard=false",
    ]
    config = load_config(PretrainConfig, resolve_config_path("mae-small-realdata"), overrides)
    dataset = build_pretrain_dataset(config.data, (256, 256))
    assert len(dataset) == 229 + 317  # OpenIST train + COVID frontal train images with a lung mask
    assert all(dataset[i].lung_mask is not None for i in (0, 228, 229, len(dataset) - 1))
    result = run_pretraining(config)
    assert result.step == 2 and result.metrics["mask_ratio_inside"] > result.metrics["mask_ratio_outside"]
