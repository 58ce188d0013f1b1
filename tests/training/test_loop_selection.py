"""The loop's per-group learning rates, Adam/AMSGrad choice and best-by-validation weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cxrfm.errors import ConfigError
from cxrfm.training.contract import TrainConfig
from cxrfm.training.loop import Trainer

from .toy_run import ToyRegression, ToyTask, toy_model


def _config(tmp_path, name, **overrides) -> TrainConfig:
    values = dict(
        output_dir=str(tmp_path / name), max_steps=4, batch_size=8, lr=0.05, warmup_steps=2, log_every=1,
        device="cpu", tensorboard=False, progress_bar=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


class _TwoRateTask(ToyTask):
    """First layer at 0.01, the rest at 0.1 (like a report model's encoder vs decoder)."""

    def param_groups(self, model, config):
        first = list(model[0].parameters())
        rest = [p for layer in list(model)[1:] for p in layer.parameters()]
        return [{"params": first, "lr": 0.01, "weight_decay": 0.0}, {"params": rest, "lr": 0.1, "weight_decay": 0.0}]


def test_groups_keep_their_own_peak_lr_under_the_schedule(tmp_path):
    trainer = Trainer(toy_model(), _TwoRateTask(), ToyRegression(), _config(tmp_path, "groups"))
    result = trainer.fit()
    # The logged lr is group 0's: warm-up over 2 steps to 0.01, then cosine over 2 (not config.lr 0.05).
    assert [r["lr"] for r in result.history] == pytest.approx([0.005, 0.01, 0.01, 0.005])
    first, rest = trainer.optimizer.param_groups
    assert (first["initial_lr"], rest["initial_lr"]) == (0.01, 0.1)
    assert rest["lr"] == pytest.approx(10 * first["lr"])


def test_adam_with_amsgrad_is_selectable(tmp_path):
    config = _config(tmp_path, "adam", optimizer="adam", amsgrad=True, weight_decay=5e-5, max_steps=2)
    trainer = Trainer(toy_model(), ToyTask(), ToyRegression(), config)
    trainer.fit()
    assert type(trainer.optimizer) is torch.optim.Adam
    assert all(group["amsgrad"] for group in trainer.optimizer.param_groups)
    assert all("max_exp_avg_sq" in state for state in trainer.optimizer.state.values())
    with pytest.raises(ConfigError, match="optimizer"):
        from cxrfm.config import from_dict

        from_dict(TrainConfig, {"optimizer": "sgd"})


class _ScoredTask(ToyTask):
    """Validation scores given per step, to check which weights are kept."""

    def __init__(self, scores: dict[int, float]):
        super().__init__()
        self.scores = scores

    def validate(self, model, step):
        return {"score": self.scores[step], "loss": -self.scores[step]}


@pytest.mark.parametrize(("mode", "metric", "best_step"), [("max", "score", 4), ("min", "loss", 4), ("max", "loss", 2)])
def test_best_weights_follow_the_validation_metric(tmp_path, mode, metric, best_step):
    scores = {2: 0.3, 4: 0.9, 6: 0.5}
    name = f"{mode}-{metric}"
    config = _config(tmp_path, name, max_steps=6, validate_every=2, checkpoint_every=2, keep_checkpoints=5, select_metric=metric, select_mode=mode)
    result = Trainer(toy_model(), _ScoredTask(scores), ToyRegression(), config).fit()
    run = tmp_path / name
    assert result.best["step"] == best_step and result.best["path"] == run / "best"
    assert json.loads((run / "best" / "best.json").read_text())["step"] == best_step
    kept = load_file(str(run / "best" / "model.safetensors"))
    same_step = load_file(str(run / "checkpoints" / f"step_{best_step:07d}" / "model.safetensors"))
    final = load_file(str(run / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert all(torch.equal(kept[k], same_step[k]) for k in kept)
    assert not all(torch.equal(kept[k], final[k]) for k in kept)
    assert not list(run.glob(".tmp-*"))


def test_resumed_run_remembers_the_best_so_far(tmp_path):
    scores = {2: 0.9, 4: 0.5, 6: 0.6}
    config = _config(tmp_path, "resume", max_steps=6, validate_every=2, checkpoint_every=2, select_metric="score")

    class Crash(_ScoredTask):
        def training_step(self, model, batch, ctx):
            if ctx.step == 4:
                raise RuntimeError("simulated crash")
            return super().training_step(model, batch, ctx)

    with pytest.raises(RuntimeError):
        Trainer(toy_model(), Crash(scores), ToyRegression(), config).fit()
    result = Trainer(toy_model(), _ScoredTask(scores), ToyRegression(), config).fit(resume=True)
    # 0.6 at step 6 does not beat the 0.9 of step 2, which the checkpoint of step 2 remembered.
    assert result.best["step"] == 2 and result.best["value"] == 0.9


def test_unknown_select_metric_is_a_config_error(tmp_path):
    config = _config(tmp_path, "typo", max_steps=2, select_metric="BLEU-4")
    with pytest.raises(ConfigError, match="BLEU-4"):
        Trainer(toy_model(), _ScoredTask({2: 0.1}), ToyRegression(), config).fit()
