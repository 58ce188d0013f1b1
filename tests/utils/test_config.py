from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from cxrfm.config import apply_overrides, from_dict, load_config, parse_override, save_config, to_dict
from cxrfm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    out: Path = Path("runs")
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)
    tags: list[str] = field(default_factory=list)


def test_defaults_and_nested(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.01\n  betas: [0.8, 0.9]\n")
    cfg = load_config(Run, path)
    assert cfg.steps == 5 and cfg.optim.lr == 0.01 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.name == "run" and cfg.out == Path("runs")


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\n")
    cfg = load_config(Run, path, ["steps=7", "optim.lr=1e-4", "tags=[a, b]", "seed=3"])
    assert cfg.steps == 7 and cfg.optim.lr == pytest.approx(1e-4) and cfg.tags == ["a", "b"] and cfg.seed == 3


def test_unknown_key_names_field_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    assert "optim.learning_rate" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "override, field_name",
    [("steps=ten", "steps"), ("optim.schedule=linear", "optim.schedule"), ("optim.betas=[1]", "optim.betas"),
     ("name=3", "name"), ("steps=true", "steps")],
)
def test_wrong_types_rejected(override, field_name):
    with pytest.raises(ConfigError) as info:
        load_config(Run, None, [override])
    assert field_name in str(info.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="section"):
        apply_overrides({"steps": 3}, ["steps.sub=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = from_dict(Run, {"steps": 2, "optim": {"betas": [0.5, 0.6]}})
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Run, tmp_path / "resolved.yaml")
    assert again == cfg
    assert to_dict(cfg)["optim"]["betas"] == [0.5, 0.6]
