"""The generic loop: accumulation, NaN guard, in-process resume, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cxrfm.errors import ConfigError
from cxrfm.training.contract import TrainConfig
from cxrfm.training.loop import NonFiniteLossError, Trainer
from cxrfm.training.checkpoint import latest_checkpoint, load_train_state

from .toy_run import ToyRegression, ToyTask, toy_model


def _config(tmp_path, name, **overrides) -> TrainConfig:
    values = dict(
        output_dir=str(tmp_path / name),
        max_steps=6,
        batch_size=8,
        lr=0.05,
        warmup_steps=2,
        log_every=1,
        device="cpu",
        tensorboard=False,
        progress_bar=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(output_dir / "checkpoints") / "model.safetensors"))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    linear = lambda: nn.Sequential(nn.Linear(8, 1))  # noqa: E731
    torch.manual_seed(0)
    model_a = linear()
    model_b = linear()
    model_b.load_state_dict(model_a.state_dict())
    Trainer(model_a, ToyTask(), ToyRegression(), _config(tmp_path, "a", grad_accum_steps=2)).fit()
    Trainer(model_b, ToyTask(), ToyRegression(), _config(tmp_path, "b", grad_accum_steps=1)).fit()
    weights_a, weights_b = model_a.state_dict(), model_b.state_dict()
    assert not torch.equal(weights_a["0.weight"], linear().state_dict()["0.weight"])
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-5, atol=1e-6)


class _ExplodingTask(ToyTask):
    def training_step(self, model, batch, ctx):
        outputs = super().training_step(model, batch, ctx)
        if ctx.step == 4:  # 0-based: the fifth optimiser step diverges
            outputs["loss"] = outputs["loss"] * float("nan")
        return outputs


def test_nan_guard_stops_with_the_step_and_last_checkpoint_and_saves_nothing_after(tmp_path):
    config = _config(tmp_path, "nan", max_steps=10, checkpoint_every=2)
    model = toy_model()
    with pytest.raises(NonFiniteLossError) as caught:
        Trainer(model, _ExplodingTask(), ToyRegression(), config).fit()
    message = str(caught.value)
    assert "step 5" in message and "nan" in message
    assert "step_0000004" in message
    assert latest_checkpoint(tmp_path / "nan" / "checkpoints").name == "step_0000004"
    assert all(torch.isfinite(t).all() for t in _final_weights(tmp_path / "nan").values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


class _CrashingTask(ToyTask):
    def training_step(self, model, batch, ctx):
        if ctx.step == 5:
            raise RuntimeError("simulated crash")
        return super().training_step(model, batch, ctx)


def test_in_process_resume_gives_identical_weights_and_outputs(tmp_path):
    full = _config(tmp_path, "full", max_steps=8, checkpoint_every=3, ema_decay=0.9)
    Trainer(toy_model(dropout=0.2), ToyTask(), ToyRegression(), full).fit()

    part = _config(tmp_path, "part", max_steps=8, checkpoint_every=3, ema_decay=0.9)
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in step 6, after the step-3 save
        Trainer(toy_model(dropout=0.2), _CrashingTask(), ToyRegression(), part).fit()
    with pytest.raises(ConfigError):  # refuses to overwrite a run without resume
        Trainer(toy_model(dropout=0.2), ToyTask(), ToyRegression(), part).fit()
    # A different initialisation and global RNG: the checkpoint must restore all of it.
    Trainer(toy_model(dropout=0.2, seed=99), ToyTask(), ToyRegression(), part).fit(resume=True)

    expected, got = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    ema_expected = load_train_state(latest_checkpoint(tmp_path / "full" / "checkpoints"))["ema"]
    ema_got = load_train_state(latest_checkpoint(tmp_path / "part" / "checkpoints"))["ema"]
    for name in ema_expected:
        assert torch.equal(ema_expected[name], ema_got[name]), name
    lines = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))  # steps 4-5 logged once
    assert (tmp_path / "part" / "config.yaml").is_file()


def test_batch_size_must_divide_across_accumulation(tmp_path):
    config = _config(tmp_path, "bad", batch_size=6, grad_accum_steps=4)
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(toy_model(), ToyTask(), ToyRegression(), config).fit()


def test_train_config_rejects_nonsense():
    with pytest.raises(ValueError):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError):
        TrainConfig(ema_decay=1.5)


def test_weight_decay_schedule_only_touches_decayed_groups(tmp_path):
    config = _config(tmp_path, "wd", max_steps=4, weight_decay=0.04, weight_decay_end=0.4)
    trainer = Trainer(toy_model(), ToyTask(), ToyRegression(), config)
    result = trainer.fit()
    decays = sorted(group["weight_decay"] for group in trainer.optimizer.param_groups)
    assert decays[0] == 0.0 and decays[1] == pytest.approx(0.04 + 0.36 * 0.5 * (1 - math.cos(math.pi * 3 / 4)))
    assert [round(r["weight_decay"], 4) for r in result.history][0] == 0.04
    # The learning rate the optimiser used: warm-up over 2 steps, then cosine over the last 2.
    assert [r["lr"] for r in result.history] == pytest.approx([0.025, 0.05, 0.05, 0.025])


class _ValidatingTask(ToyTask):
    def __init__(self):
        super().__init__()
        self.calls = []

    def validate(self, model, step):
        self.calls.append((step, model.training))
        return {"score": float(step)}


def test_validate_hook_runs_in_eval_mode_on_cadence_and_at_the_end(tmp_path):
    task = _ValidatingTask()
    Trainer(toy_model(), task, ToyRegression(), _config(tmp_path, "val", max_steps=5, validate_every=2)).fit()
    assert task.calls == [(2, False), (4, False), (5, False)]
    records = [json.loads(line) for line in (tmp_path / "val" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/score"] for r in records if "val/score" in r] == [2.0, 4.0, 5.0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tmp_path, precision):
    result = Trainer(toy_model(), ToyTask(), ToyRegression(), _config(tmp_path, precision, precision=precision)).fit()
    assert all(math.isfinite(record["loss"]) for record in result.history)
    if precision == "fp16":  # the GradScaler is active and reported
        assert all(record["loss_scale"] > 0 for record in result.history)


def test_a_torn_last_metrics_line_does_not_stop_the_resume(tmp_path):
    # A run killed while appending to metrics.jsonl leaves half a line: the resume drops it (and
    # the steps logged after the checkpoint) instead of failing on JSON.
    part = _config(tmp_path, "part", max_steps=8, checkpoint_every=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(toy_model(), _CrashingTask(), ToyRegression(), part).fit()
    with open(tmp_path / "part" / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 6, "loss": 0.')  # no newline, no closing brace
    Trainer(toy_model(), ToyTask(), ToyRegression(), part).fit(resume=True)
    lines = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 9))
