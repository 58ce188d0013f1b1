"""Run settings are checked when the config is read (and on this machine before any work), each
failure a ConfigError naming the field."""

from __future__ import annotations

import pytest
import torch

from cxrfm.config import load_config
from cxrfm.errors import ConfigError
from cxrfm.recipes.pretrain import PretrainConfig, run_pretraining
from cxrfm.training.contract import TrainConfig, check_run_settings


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=0", "lr must be a finite number > 0, got 0.0"),
        ("train.lr=-1e-3", "lr must be a finite number > 0"),
        ("train.lr=.nan", "lr must be a finite number > 0, got nan"),
        ("train.lr=.inf", "lr must be a finite number > 0, got inf"),
        ("train.base_lr=0", "base_lr must be a finite number > 0"),
        ("train.weight_decay=-0.1", "weight_decay must be a finite number >= 0"),
        ("train.min_lr=.nan", "min_lr must be a finite number >= 0"),
        ("train.betas=[0.9, 1.0]", "betas must be two numbers in [0, 1)"),
        ("train.clip_grad=.nan", "clip_grad must be > 0 or null"),
        ("train.device=gpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        ("train.device=cuda:x", "device must be"),
        ("train.num_threads=0", "num_threads must be >= 1"),
        ("train.batch_size=0", "batch_size must be >= 1"),
        ("train.max_steps=-5", "max_steps must be >= 1"),
        ("data.sources.phantom.num_samples=0", "num_samples must be an integer >= 1, got 0"),
        ("data.sources.phantom.seed=-1", "seed must be >= 0"),
    ],
)
def test_bad_run_settings_are_config_errors_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(PretrainConfig, None, [override])


def test_a_missing_gpu_and_an_output_dir_that_is_a_file_stop_the_run_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible") as error:
        check_run_settings(TrainConfig(device="cuda", output_dir=str(tmp_path)))
    assert error.value.field == "train.device"
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match="is a file, not a folder") as error:
        check_run_settings(TrainConfig(output_dir=str(tmp_path / "taken" / "run")))
    assert error.value.field == "train.output_dir"
    assert check_run_settings(TrainConfig(device="auto", output_dir=str(tmp_path / "fine"))) == torch.device("cpu")
    config = load_config(PretrainConfig, None, [f"train.output_dir={tmp_path / 'taken'}"])
    with pytest.raises(ConfigError, match="train.output_dir"):
        run_pretraining(config)  # refused before the model or any phantom is built
    assert (tmp_path / "taken").read_text() == "a file"
