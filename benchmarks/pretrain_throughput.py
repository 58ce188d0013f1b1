"""MAE pretraining throughput: images/s and model-FLOPs utilisation (MFU), end to end.

For each preset it writes phantom chest radiographs into WebDataset shards (the real storage
format), then measures three rates on one device:

* ``loader``: shards -> DataLoader workers decoding PNG/JPEG -> collated batches (no model);
* ``model``: one batch already on the device, masked and trained on repeatedly (no data loading):
  the compute ceiling, from which MFU is computed;
* ``e2e``: the real :class:`~cxrfm.training.loop.Trainer` with the MAE task reading the shards
  (worker decoding -> host-to-device copy -> chest regions -> context-aware masker -> forward /
  backward / AdamW step), timed per step after warm-up.

MFU = images/s x ``mae_flops_per_image(config, num_keep)`` / peak FLOP/s, where the FLOPs count the
matrix products of the forward pass x 3 (``cxrfm.models.flops``) and the peak is ``--peak-tflops``
(default from the device name: H100/H200 989, A100 312 dense bf16 TFLOP/s; none on CPU).

    python benchmarks/pretrain_throughput.py --preset mae-small-cpu --device cpu --steps 10
    python benchmarks/pretrain_throughput.py --preset hd-mae-vitl-1280 --device cpu --batch-size 1 --steps 2
    python benchmarks/pretrain_throughput.py --preset hd-mae-vitl-1280 --device cuda --batch-size 128 \
        --steps 30 --compile --num-workers 14 --encoding jpeg
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cxrfm.config import from_dict
from cxrfm.data.sample import collate_samples
from cxrfm.models import mae_flops_per_image
from cxrfm.training.contract import StepContext
from cxrfm.training.loop import Trainer
from cxrfm.training.tasks.mae import MAEPretrainTask
from cxrfm.recipes.pretrain import PretrainConfig, build_model, build_model_config, build_region_provider, build_task

log = logging.getLogger("pretrain_throughput")

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


@dataclass
class Rates:
    preset: str
    image_size: tuple[int, int]
    batch_size: int
    num_keep: int
    num_patches: int
    gflops_per_image: float
    loader: float | None
    model: float | None
    e2e: float | None
    peak_tflops: float | None

    def mfu(self, images_per_s: float | None) -> float | None:
        if images_per_s is None or not self.peak_tflops:
            return None
        return images_per_s * self.gflops_per_image * 1e9 / (self.peak_tflops * 1e12)


def write_phantom_shards(out_dir: Path, count: int, size: tuple[int, int], encoding: str, workers: int) -> Path:
    """``count`` phantoms at ``size`` as shards in ``out_dir`` (reused when already complete)."""
    from cxrfm.data.phantom import PhantomDataset
    from cxrfm.data.shards import write_shards

    started = time.perf_counter()
    index = write_shards(
        PhantomDataset(count, size, seed=0),
        out_dir,
        image_size=size,
        encoding=encoding,
        max_samples_per_shard=max(1, count // max(1, 2 * workers)),
        num_workers=workers,
    )
    log.info("shards: %d samples in %s (%.1f s)", index.get("num_samples", count), out_dir, time.perf_counter() - started)
    return out_dir


def _pretrain_config(preset: str, batch_size: int, device: str, precision: str, compile_model: bool, workers: int, out: Path) -> PretrainConfig:
    return from_dict(
        PretrainConfig,
        {
            "model": {"preset": preset},
            "masking": {"kind": "context", "ratio_inside": 0.95, "ratio_outside": 0.85, "region": "given", "region_fallback": "rectangle"},
            "train": {
                "output_dir": str(out),
                "batch_size": batch_size,
                "lr": 1e-4,
                "warmup_steps": 0,
                "clip_grad": 3.0,
                "precision": precision,
                "device": device,
                "compile": compile_model,
                "num_workers": workers,
                "log_every": 1,
                "tensorboard": False,
                "progress_bar": False,
                "save_checkpoints": False,
            },
        },
    )


class _BenchmarkTask(MAEPretrainTask):
    """The MAE task without figures or encoder export (they would be timed otherwise)."""

    on_figure = None
    on_train_end = None

    @classmethod
    def of(cls, config: PretrainConfig) -> "_BenchmarkTask":
        return cls(config.masking, build_region_provider(config.masking), augment=config.augment, figures=config.figures)


def measure_loader(shards: Path, batch_size: int, workers: int, batches: int) -> float:
    from cxrfm.data.shards import ShardDataset

    dataset = ShardDataset(shards, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples, drop_last=True)
    seen, started = 0, None
    while seen < batches:
        for batch in loader:
            if started is None:  # skip the first batch: worker start-up
                started = time.perf_counter()
                continue
            seen += 1
            if seen >= batches:
                break
        dataset.set_epoch(dataset.epoch + 1)
    return batches * batch_size / (time.perf_counter() - started)


def measure_model(config: PretrainConfig, shards: Path, steps: int, warmup: int) -> float:
    """Train on one on-device batch: the compute rate with no data loading."""
    from cxrfm.data.shards import ShardDataset
    from cxrfm.utils import resolve_device

    device = resolve_device(config.train.device)
    model = build_model(config.model).to(device)
    task = _BenchmarkTask.of(config)
    samples = []
    for sample in ShardDataset(shards):
        samples.append(sample)
        if len(samples) == config.train.batch_size:
            break
    while len(samples) < config.train.batch_size:
        samples += samples[: config.train.batch_size - len(samples)]
    batch = collate_samples(samples)
    batch.meta = [dict(meta, index=i) for i, meta in enumerate(batch.meta)]
    batch = batch.to(device)
    optimizer = torch.optim.AdamW(task.param_groups(model, config.train), lr=1e-4, fused=device.type == "cuda" or None)
    train_model = torch.compile(model) if config.train.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision)
    elapsed = 0.0
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        context = StepContext(step, 0, 0, 0, device, 0, 1, config.train)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = task.training_step(train_model, batch, context)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the real loop syncs once per step too
        if step >= warmup:
            elapsed += time.perf_counter() - started
    return steps * config.train.batch_size / elapsed


def measure_e2e(config: PretrainConfig, shards: Path, steps: int, warmup: int) -> float:
    """The real Trainer reading shards; rate over the steps after ``warmup``."""
    from cxrfm.data.shards import ShardDataset

    config.train.max_steps = warmup + steps
    model = build_model(config.model)
    dataset = ShardDataset(shards, shuffle=True, seed=0)
    result = Trainer(model, _BenchmarkTask.of(config), dataset, config.train, run_config=config).fit()
    step_times = [config.train.batch_size / record["images_per_s"] for record in result.history[warmup:]]
    return len(step_times) * config.train.batch_size / sum(step_times)


def run_preset(args: argparse.Namespace, preset: str, work_dir: Path) -> Rates:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    model_config = build_model_config(_pretrain_config(preset, 1, device, precision, False, 0, work_dir).model)
    size = tuple(model_config.encoder.image_size)
    # One epoch should cover the e2e run: restarting DataLoader workers each (short) epoch would
    # be timed too, which a real epoch of a million images amortises.
    num_images = args.num_images or args.batch_size * (args.steps + args.warmup_steps + 1)
    shards = write_phantom_shards(work_dir / f"shards-{preset}-{args.encoding}", num_images, size, args.encoding, args.num_workers)
    config = _pretrain_config(preset, args.batch_size, device, precision, args.compile, args.num_workers, work_dir / f"run-{preset}")
    task = build_task(config)
    num_patches = model_config.encoder.num_patches
    num_keep = task.masker.num_keep(num_patches)
    peak = args.peak_tflops if args.peak_tflops is not None else _default_peak(device)
    loader = None if args.skip_loader else measure_loader(shards, args.batch_size, args.num_workers, max(2, args.steps))
    model_rate = None if args.skip_model else measure_model(config, shards, args.steps, args.warmup_steps)
    e2e = None if args.skip_e2e else measure_e2e(config, shards, args.steps, args.warmup_steps)
    return Rates(preset, size, args.batch_size, num_keep, num_patches, mae_flops_per_image(model_config, num_keep) / 1e9, loader, model_rate, e2e, peak)


def _default_peak(device: str) -> float | None:
    if device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def format_table(rows: list[Rates], device_name: str) -> str:
    def rate(value):
        return "-" if value is None else f"{value:.1f}"

    def percent(value):
        return "-" if value is None else f"{100 * value:.1f} %"

    lines = [
        f"device: {device_name}",
        "| preset | image | batch | kept/patches | GFLOP/img (train) | loader img/s | model img/s | model MFU | e2e img/s | e2e MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.preset} | {row.image_size[0]}x{row.image_size[1]} | {row.batch_size} | {row.num_keep}/{row.num_patches} "
            f"| {row.gflops_per_image:.1f} | {rate(row.loader)} | {rate(row.model)} | {percent(row.mfu(row.model))} "
            f"| {rate(row.e2e)} | {percent(row.mfu(row.e2e))} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["mae-small-cpu"], help="MAE presets (e.g. mae-small-cpu hd-mae-vitl-1280)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default bf16 on cuda, fp32 on cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader decoding workers")
    parser.add_argument(
        "--num-images",
        type=int,
        help="phantoms written to shards (default: enough that the timed e2e run stays within one epoch)",
    )
    parser.add_argument("--encoding", default="png16", choices=("png16", "png8", "jpeg"))
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default by GPU name)")
    parser.add_argument("--work-dir", help="keep shards here (default: a temporary folder, removed)")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("cxrfm.training.loop").setLevel(logging.WARNING)  # no per-step lines
    if args.threads:
        torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cxrfm-bench-"))
    try:
        rows = [run_preset(args, preset, work_dir) for preset in args.preset]
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    device_name = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    table = format_table(rows, device_name)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps([row.__dict__ | {"model_mfu": row.mfu(row.model), "e2e_mfu": row.mfu(row.e2e)} for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
