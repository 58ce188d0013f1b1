"""A tiny deterministic training run for the loop's tests (launched in-process or by torchrun).

The model has a LayerNorm (no-decay group must still train) and optional dropout (global RNG: exact
resume then needs the RNG state restored); the task masks inputs with per-sample hashed noise
(keyed by (seed, epoch, sample index), like MAE masking).

    python toy_run.py OUTPUT_DIR --max-steps 12 [--resume] [--sleep 0.05]
    python -m torch.distributed.run --nproc_per_node=2 toy_run.py OUTPUT_DIR ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from cxrfm.data.sample import CXRSample
from cxrfm.training.contract import BaseTask, StepContext, TrainConfig
from cxrfm.training.loop import Trainer
from cxrfm.training.randomness import STREAM_MASKING, hashed_uniform

FEATURES = 8


class ToyRegression(Dataset):
    """``(index, x (8,), y (1,))`` with a fixed linear target."""

    def __init__(self, num_samples: int = 48):
        generator = torch.Generator().manual_seed(123)
        self.x = torch.randn(num_samples, FEATURES, generator=generator)
        weights = torch.randn(FEATURES, 1, generator=generator)
        self.y = self.x @ weights + 0.1 * torch.randn(num_samples, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return torch.tensor(index), self.x[index], self.y[index]


class TwoLungs(Dataset):
    """Chest-like images: dark ellipses ("lungs") on a brighter body, with their masks."""

    def __init__(self, count: int = 16, size: int = 64):
        self.count, self.size = count, size

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        y, x = torch.meshgrid(torch.linspace(-1, 1, self.size), torch.linspace(-1, 1, self.size), indexing="ij")
        shift = 0.1 * (torch.rand(2, generator=generator) - 0.5)
        left = ((x + 0.4 + shift[0]) / 0.28) ** 2 + ((y + shift[1]) / 0.55) ** 2 < 1
        right = ((x - 0.4 + shift[0]) / 0.28) ** 2 + ((y + shift[1]) / 0.55) ** 2 < 1
        lungs = (left | right).float()
        image = 0.7 - 0.5 * lungs + 0.05 * torch.rand(self.size, self.size, generator=generator)
        return CXRSample(image=image[None].clamp(0, 1), lung_mask=lungs[None], meta={"path": f"toy/{index}.png"})


def mae_setup(max_steps: int):
    """A one-block MAE on 64x64 TwoLungs with context-aware masking and crop augmentation."""
    from cxrfm.config import from_dict
    from cxrfm.recipes.pretrain import PretrainConfig, build_model, build_task

    config = from_dict(
        PretrainConfig,
        {
            "model": {"preset": "mae-tiny-cpu", "overrides": {"image_size": [64, 64], "patch_size": [8, 8], "depth": 1, "decoder_depth": 1}},
            "masking": {"kind": "context", "ratio_inside": 0.75, "ratio_outside": 0.5, "region": "given"},
            "augment": {"random_resized_crop": True, "intensity_jitter": 0.1},
        },
    )
    torch.manual_seed(0)
    return build_model(config.model), build_task(config), TwoLungs(24)


def toy_model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 1))


class ToyTask(BaseTask):
    def __init__(self, sleep_s: float = 0.0, mask_inputs: bool = True):
        self.sleep_s = sleep_s
        self.mask_inputs = mask_inputs

    def training_step(self, model: nn.Module, batch, ctx: StepContext) -> dict:
        index, x, y = batch
        if self.mask_inputs:
            keep = hashed_uniform(index, FEATURES, seed=ctx.seed, epoch=ctx.epoch, stream=STREAM_MASKING) > 0.25
            x = x * keep.to(x.dtype)
        loss = nn.functional.mse_loss(model(x), y)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"loss": loss, "kept": keep.float().mean() if self.mask_inputs else 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--mae", action="store_true", help="tiny MAE with context-aware masking instead of the MLP")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = TrainConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum_steps=args.accum,
        lr=args.lr,
        warmup_steps=args.warmup,
        clip_grad=1.0,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=2,
        log_every=1,
        device="cpu",
        tensorboard=False,
        progress_bar=False,
    )
    if args.mae:
        model, task, dataset = mae_setup(args.max_steps)
        task.on_figure = task.on_train_end = None
    else:
        model, task, dataset = toy_model(args.dropout), ToyTask(args.sleep), ToyRegression()
    result = Trainer(model, task, dataset, config).fit(resume=args.resume)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        Path(args.output_dir, "history.json").write_text(json.dumps(result.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
