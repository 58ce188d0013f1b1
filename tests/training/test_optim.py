"""Schedule values, learning-rate scaling and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cxrfm.training.optim import build_scheduler, default_param_groups, lr_factor, scaled_learning_rate


def test_lr_scaling_follows_the_mae_rule():
    assert scaled_learning_rate(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_learning_rate(2.5e-4, 256) == pytest.approx(2.5e-4)


def test_warmup_is_linear_and_reaches_the_peak_on_its_last_step():
    factors = [lr_factor(s, max_steps=100, warmup_steps=10, min_lr_ratio=0.0) for s in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, max_steps=100, warmup_steps=10, min_lr_ratio=0.0) == pytest.approx(1.0)


def test_cosine_reaches_min_lr_at_max_steps_and_is_half_way_at_the_middle():
    kwargs = dict(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(110, **kwargs) == pytest.approx(0.1)
    assert lr_factor(60, **kwargs) == pytest.approx(0.1 + 0.9 * 0.5)
    values = [lr_factor(s, **kwargs) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_scheduler_is_actually_applied_to_the_optimizer():
    # The HD-MAE reference computed a schedule but never wrote it into the optimiser.
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, max_steps=20, warmup_steps=4, peak_lr=1.0, min_lr=0.0)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_param_groups_exempt_biases_norms_and_embeddings_without_freezing_them():
    model = _Tiny()
    groups = default_param_groups(model, weight_decay=0.05)
    decay = next(g for g in groups if g["weight_decay"] > 0)
    no_decay = next(g for g in groups if g["weight_decay"] == 0)
    assert decay["param_names"] == ["proj.weight"]
    assert sorted(no_decay["param_names"]) == ["cls_token", "norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    # Every trainable parameter is optimised exactly once, and the exempt ones do move.
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == sum(p.requires_grad for p in model.parameters())
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    before = model.norm.weight.detach().clone()
    (model.norm(model.proj(torch.randn(2, 8))) ** 2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.norm.weight)


def test_weight_decay_schedule_runs_from_start_to_end():
    from cxrfm.training.optim import cosine_weight_decay

    assert cosine_weight_decay(0, max_steps=100, start=0.04, end=0.4) == pytest.approx(0.04)
    assert cosine_weight_decay(50, max_steps=100, start=0.04, end=0.4) == pytest.approx(0.22)
    assert cosine_weight_decay(100, max_steps=100, start=0.04, end=0.4) == pytest.approx(0.4)
