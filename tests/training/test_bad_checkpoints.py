"""Resuming from a damaged checkpoint: a CheckpointError naming the file and the key, never a raw
library error; train_state.pt is only ever read with ``weights_only=True`` (nothing unpickled)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cxrfm.errors import CheckpointError, ConfigError
from cxrfm.training import checkpoint as ckpt
from cxrfm.training.contract import TrainConfig
from cxrfm.training.loop import Trainer

from .toy_run import ToyRegression, ToyTask, toy_model


def _config(output_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        output_dir=str(output_dir), max_steps=6, batch_size=8, lr=0.05, warmup_steps=1, checkpoint_every=2,
        log_every=1, device="cpu", tensorboard=False, progress_bar=False, ema_decay=0.9,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4 (copied before each corruption)."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    torch.set_num_threads(1)
    Trainer(toy_model(), ToyTask(), ToyRegression(), _config(output_dir, max_steps=4)).fit()
    return output_dir


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "out"))


def _latest(run: Path) -> Path:
    return ckpt.latest_checkpoint(run / "checkpoints")


def _resume(run: Path, resume=True, **overrides):
    return Trainer(toy_model(seed=5), ToyTask(), ToyRegression(), _config(run, **overrides)).fit(resume=resume)


def _resume_raises(run: Path, *fragments: str, resume=True) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        _resume(run, resume)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return caught.value


def test_the_untouched_run_resumes(run):
    assert _resume(run).history[-1]["step"] == 6


# --------------------------------------------------------------------------------- model.safetensors
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b""), id="zero-byte"),
        pytest.param(lambda p: p.write_bytes(b"not a safetensors file at all, sorry"), id="garbage"),
    ],
)
def test_unreadable_weights_on_resume_name_the_file(run, corrupt):
    weights = _latest(run) / ckpt.MODEL_FILE
    corrupt(weights)
    error = _resume_raises(run, "cannot read weights")
    assert Path(error.path) == weights


def test_weights_of_another_model_on_resume_name_the_file(run):
    from safetensors.torch import save_file

    weights = _latest(run) / ckpt.MODEL_FILE
    save_file({"other.weight": torch.zeros(3, 3)}, str(weights))
    error = _resume_raises(run, "does not match")
    assert Path(error.path) == weights


# ------------------------------------------------------------------------------------ train_state.pt
def _edit_state(run: Path, edit) -> Path:
    path = _latest(run) / ckpt.STATE_FILE
    state = torch.load(path, weights_only=True)
    state = edit(state)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("key", ["step", "epoch_offset", "batch_size", "optimizer", "scheduler", "rng"])
def test_a_train_state_missing_a_key_names_the_file_and_the_key(run, key):
    path = _edit_state(run, lambda state: {k: v for k, v in state.items() if k != key})
    error = _resume_raises(run, ckpt.STATE_FILE, f"'{key}'")
    assert Path(error.path) == path


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        pytest.param(lambda s: [1, 2, 3], "holds a list", id="not-a-mapping"),
        pytest.param(lambda s: torch.zeros(3), "holds a Tensor", id="a-tensor"),
        pytest.param(lambda s: {**s, "step": "four"}, "'step' is a str", id="step-as-text"),
        pytest.param(lambda s: {**s, "epoch": -1}, "'epoch' is -1", id="negative-epoch"),
        pytest.param(lambda s: {**s, "ema": [1.0]}, "'ema' is a list", id="ema-not-a-mapping"),
        pytest.param(lambda s: {**s, "best": 0.9}, "'best'", id="best-not-a-mapping"),
        pytest.param(lambda s: {**s, "optimizer": {"state": {}}}, "'optimizer' lacks param_groups", id="optimizer-lacks-groups"),
        pytest.param(
            lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": s["optimizer"]["param_groups"][:1]}},
            "'optimizer' does not fit", id="optimizer-other-groups",
        ),
        pytest.param(
            lambda s: {**s, "optimizer": {**s["optimizer"], "state": {i: {**v, "exp_avg": torch.zeros(7)} for i, v in s["optimizer"]["state"].items()}}},
            "'optimizer' state 'exp_avg'", id="optimizer-moment-shapes",
        ),
        pytest.param(lambda s: {**s, "scheduler": {"base_lrs": [0.1]}}, "'scheduler' lacks", id="scheduler-lacks-keys"),
        pytest.param(lambda s: {**s, "ema": {"n_averaged": torch.tensor(1)}}, "'ema'", id="ema-of-another-model"),
        pytest.param(lambda s: {**s, "rng": [{"torch": torch.zeros(3, dtype=torch.uint8)}]}, "'rng' cannot be restored", id="rng-garbage"),
    ],
)
def test_a_malformed_train_state_names_the_file_and_the_key(run, edit, fragment):
    path = _edit_state(run, edit)
    error = _resume_raises(run, fragment)
    assert Path(error.path) == path


def test_a_batch_size_change_is_still_a_config_error(run):
    with pytest.raises(ConfigError, match="train.batch_size"):
        _resume(run, batch_size=16)


class _Payload:
    """Unpickling this would create ``marker``: weights_only must refuse it before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_train_state_holding_a_pickled_object_is_refused_and_never_run(run, tmp_path):
    marker = tmp_path / "code-ran"
    path = _latest(run) / ckpt.STATE_FILE
    state = torch.load(path, weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, path)
    error = _resume_raises(run, ckpt.STATE_FILE, "cannot be loaded")
    assert Path(error.path) == path
    assert not marker.exists()


def test_a_truncated_train_state_names_the_file(run):
    path = _latest(run) / ckpt.STATE_FILE
    path.write_bytes(path.read_bytes()[:100])
    assert Path(_resume_raises(run, "cannot be loaded").path) == path


# ---------------------------------------------------------------------------- finding the checkpoint
def test_an_unreadable_latest_pointer_falls_back_to_the_newest_complete_checkpoint(run):
    (run / "checkpoints" / ckpt.LATEST_FILE).write_bytes(b"\xff\xfe\x00garbage")
    assert _latest(run).name == "step_0000004"
    (run / "checkpoints" / ckpt.LATEST_FILE).write_text("../../../etc\n")  # never followed out of the folder
    assert _latest(run).name == "step_0000004"
    assert _resume(run).history[-1]["step"] == 6


@pytest.mark.parametrize("where", ["missing", "a-file", "incomplete"])
def test_resume_from_a_path_that_is_not_a_checkpoint_names_it(run, tmp_path, where):
    target = tmp_path / "elsewhere"
    if where == "a-file":
        target.write_text("hello")
    elif where == "incomplete":
        target = Path(shutil.copytree(_latest(run), target))
        (target / ckpt.STATE_FILE).unlink()
    fresh = tmp_path / "fresh"
    error = _resume_raises(fresh, str(target), resume=target)
    assert Path(error.path) == target
    if where == "incomplete":
        assert ckpt.STATE_FILE in str(error)
