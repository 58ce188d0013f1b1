"""The one training loop of the toolkit.

A *task* says what one step computes (MAE reconstruction, report generation, ...); the
:class:`Trainer` does everything else the same way for all of them: AdamW (or Adam) with
per-iteration warm-up + cosine, per-group learning rates, gradient accumulation, clipping, mixed
precision, EMA, DDP under ``torchrun``, a NaN guard, crash-safe checkpoints with exact resume,
keeping the best weights by a validation metric, TensorBoard + JSONL metrics and a progress bar on
rank 0.

Batch sizes: ``TrainConfig.batch_size`` is the *global* batch of one optimiser step, i.e. the
number of samples whose gradients make one update. Each rank's micro-batch is
``batch_size / (world_size * grad_accum_steps)``; with ``lr: null`` the peak learning rate is
``base_lr * batch_size / 256`` (the MAE rule).

Exact resume: the data order is a function of ``(seed, epoch)`` (:mod:`cxrfm.training.sampler`),
per-sample randomness of ``(seed, epoch, sample index)`` (:mod:`cxrfm.training.randomness`), and the
checkpoint stores the step, the position inside the epoch, optimiser/scheduler/scaler/EMA state and
every rank's global RNG state. A run killed and resumed therefore ends with the weights of an
uninterrupted one (bit for bit on CPU). Iterable datasets (WebDataset shard streams) resume by
reading and discarding the batches already consumed in the epoch: exact when the stream's order
depends only on its epoch, and it costs the read time of the skipped part.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from cxrfm.config import save_config, to_dict
from cxrfm.data.sample import CXRSample, collate_any
from cxrfm.errors import CXRFMError, ConfigError, DatasetError
from cxrfm.training import checkpoint as ckpt
from cxrfm.training import distributed
from cxrfm.training.contract import BEST_DIR, BEST_FILE, StepContext, TrainConfig, TrainingTask, TrainResult
from cxrfm.training.optim import build_scheduler, cosine_weight_decay
from cxrfm.training.randomness import capture_rng_state, restore_rng_state
from cxrfm.training.sampler import ResumableDistributedSampler
from cxrfm.utils.files import replace_folder
from cxrfm.utils.runtime import move_to_device

log = logging.getLogger(__name__)

class NonFiniteLossError(CXRFMError):
    """Training diverged: the loss (or gradient norm) became NaN/inf. Nothing was saved after it."""

    def __init__(self, step: int, what: str, value: float, last_checkpoint: Path | None):
        self.step = step
        self.last_checkpoint = last_checkpoint
        where = f"last checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
        super().__init__(
            f"{what} became {value} at step {step}; stopped without saving ({where}). "
            "Lower the learning rate, enable clip_grad or use bf16/fp32, then resume with --resume."
        )


class _IndexedDataset(Dataset):
    """Adds ``meta["index"]`` (the dataset index) so tasks can key per-sample randomness."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if isinstance(sample, CXRSample):
            sample.meta = {**sample.meta, "index": int(index)}
        return sample


def _logged_step(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line; None for a line that is not a whole record (the
    torn last line of a run killed mid-write is dropped, not fatal to its resume)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return int(record.get("step", 0)) if isinstance(record, dict) and isinstance(record.get("step", 0), int) else None


def _json_line(record: dict) -> str:
    """One JSONL line; NaN/inf (e.g. a ratio over a region no sample has) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean) + "\n"


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _write_best(folder: Path, model: nn.Module, best: dict[str, Any]) -> None:
    ckpt.save_model_files(model, folder)
    (folder / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n", encoding="utf-8")


class Trainer:
    """Runs ``task`` on ``model`` over ``dataset`` with ``config``.

    Args:
        model: an ``nn.Module`` built identically on every rank (DDP then broadcasts rank 0's
            weights anyway).
        task: a :class:`TrainingTask`.
        dataset: map-style (yields :class:`CXRSample` or whatever ``collate_fn`` takes) or an
            ``IterableDataset`` (shard streams; it should split itself across ranks and workers).
        config: :class:`TrainConfig`.
        collate_fn: list of samples -> batch (default :func:`collate_any`).
        run_config: the full resolved run config to save as ``config.yaml`` (default ``config``).
    """

    def __init__(
        self,
        model: nn.Module,
        task: TrainingTask,
        dataset: Dataset,
        config: TrainConfig,
        *,
        collate_fn: Callable[[list], Any] = collate_any,
        run_config: Any = None,
    ):
        self.model = model
        self.task = task
        self.dataset = dataset
        self.config = config
        self.collate_fn = collate_fn
        self.run_config = run_config if run_config is not None else config
        self.output_dir = Path(config.output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.epoch_offset = 0  # samples of the current epoch consumed, counted over all ranks
        self.last_checkpoint: Path | None = None
        self.ema_model: torch.optim.swa_utils.AveragedModel | None = None
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None
        self.writer = None
        self.dist: distributed.DistributedContext | None = None

    # ----------------------------------------------------------------------------------- set-up
    def _setup(self, resume: bool | str | Path) -> None:
        config = self.config
        self.dist = distributed.init_distributed(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = self.dist.device
        per_rank = self.dist.world_size * config.grad_accum_steps
        if config.batch_size % per_rank:
            raise ConfigError(
                "train.batch_size",
                f"{config.batch_size} is not divisible by world_size x grad_accum_steps = "
                f"{self.dist.world_size} x {config.grad_accum_steps}",
            )
        self.micro_batch_size = config.batch_size // per_rank
        self.model.to(self.device)
        resume_from = self._find_resume_checkpoint(resume)
        if resume_from is not None:
            ckpt.load_model_weights(self.model, resume_from)
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(
            self.optimizer,
            max_steps=config.max_steps,
            warmup_steps=config.warmup_steps,
            peak_lr=config.peak_lr(),
            min_lr=config.min_lr,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        if config.ema_decay is not None:
            self.ema_model = torch.optim.swa_utils.AveragedModel(
                self.model,
                multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
                use_buffers=True,
            )
        if resume_from is not None:
            self._load_train_state(resume_from)
        self.train_model = self._wrap_model(self.model)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_config, self.output_dir / "config.yaml")
        distributed.barrier()
        self._setup_outputs()
        log.info(
            "training %s: %d steps, global batch %d (%d per rank x %d ranks x %d accumulation), peak lr %.3g, %s on %s",
            type(self.task).__name__,
            config.max_steps,
            config.batch_size,
            self.micro_batch_size,
            self.dist.world_size,
            config.grad_accum_steps,
            config.peak_lr(),
            config.precision,
            self.device,
        )

    def _find_resume_checkpoint(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            if ckpt.list_checkpoints(self.checkpoints_dir):
                raise ConfigError(
                    "train.output_dir",
                    f"{self.output_dir} already holds checkpoints; resume (--resume) or choose another output_dir",
                )
            return None
        if resume is True:
            found = ckpt.latest_checkpoint(self.checkpoints_dir)
            if found is None:
                log.info("no checkpoint in %s: starting from step 0", self.checkpoints_dir)
            return found
        path = Path(resume)
        if not ckpt.is_complete(path):
            problem = "is a file" if path.is_file() else "lacks " + ", ".join(ckpt.missing_files(path)) if path.exists() else "does not exist"
            raise ckpt.CheckpointError(path, f"is not a complete checkpoint folder: it {problem}")
        return path

    def _build_optimizer(self) -> torch.optim.Optimizer:
        groups = self.task.param_groups(ckpt.unwrap_model(self.model), self.config)
        grouped = sum(len(group["params"]) for group in groups)
        trainable = sum(1 for p in self.model.parameters() if p.requires_grad)
        if grouped != trainable:
            raise ConfigError("param_groups", f"{grouped} parameters in groups but {trainable} trainable: none may be left out or repeated")
        optimizer_class = torch.optim.AdamW if self.config.optimizer == "adamw" else torch.optim.Adam
        return optimizer_class(
            groups,
            lr=self.config.peak_lr(),
            betas=tuple(self.config.betas),
            weight_decay=self.config.weight_decay,
            amsgrad=self.config.amsgrad,
            fused=self.device.type == "cuda" or None,
        )

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        if self.dist.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters
            )
        if self.config.compile:
            model = torch.compile(model)
        return model

    def _setup_outputs(self) -> None:
        self.metrics_path = self.output_dir / "metrics.jsonl"
        if not self.dist.is_main:
            return
        self._truncate_metrics_after(self.step)
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.step or None)

    def _truncate_metrics_after(self, step: int) -> None:
        """A resumed run rewrites the steps the crashed run logged after its last checkpoint."""
        if not self.metrics_path.is_file():
            return
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        kept = [line for line in text.splitlines() if _logged_step(line) is not None and _logged_step(line) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # ------------------------------------------------------------------------------------ data
    def _make_loader(self, epoch: int, start_index: int) -> DataLoader:
        cuda = self.device.type == "cuda"
        # Our own generator: DataLoader would otherwise draw worker seeds from the global RNG,
        # which a resumed run would then consume at a different point.
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        common = dict(
            batch_size=self.micro_batch_size,
            num_workers=self.config.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=cuda,
            drop_last=True,
            generator=generator,
        )
        if isinstance(self.dataset, IterableDataset):
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            return DataLoader(self.dataset, **common)
        self.sampler.set_epoch(epoch, start_index)
        return DataLoader(self.indexed_dataset, sampler=self.sampler, **common)

    def _micro_batches(self) -> Iterator[tuple[int, Any]]:
        """Endless ``(epoch, batch)`` pairs; keeps ``epoch`` / ``epoch_offset`` current for checkpoints."""
        global_micro = self.micro_batch_size * self.dist.world_size
        if not isinstance(self.dataset, IterableDataset):
            self.indexed_dataset = _IndexedDataset(self.dataset)
            self.sampler = ResumableDistributedSampler(
                len(self.dataset),
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                seed=self.config.seed,
                shuffle=self.config.shuffle,
            )
            if len(self.dataset) < global_micro:
                raise DatasetError(
                    "training dataset",
                    f"{len(self.dataset)} samples cannot fill one micro-batch of {self.micro_batch_size} on each of {self.dist.world_size} ranks",
                )
        while True:
            is_stream = isinstance(self.dataset, IterableDataset)
            loader = self._make_loader(self.epoch, 0 if is_stream else self.epoch_offset)
            skip = self.epoch_offset // global_micro if is_stream else 0
            produced = 0
            for batch in loader:
                produced += 1
                if produced <= skip:  # shard stream resume: discard what the crashed run used
                    continue
                self.epoch_offset += global_micro
                yield self.epoch, batch
            if produced == 0 and self.epoch_offset == 0:
                raise DatasetError("training dataset", "produced no batch in a whole epoch")
            self.epoch += 1
            self.epoch_offset = 0

    def _figure_batch(self) -> Any:
        """A fixed batch (the first samples of the dataset) so figures are comparable over time."""
        count = self.config.figure_samples
        if isinstance(self.dataset, IterableDataset):
            samples = []
            for sample in self.dataset:
                samples.append(sample)
                if len(samples) == count:
                    break
        else:
            indexed = _IndexedDataset(self.dataset)
            samples = [indexed[i] for i in range(min(count, len(self.dataset)))]
        return self.collate_fn(samples)

    # ------------------------------------------------------------------------------- the loop
    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train to ``max_steps`` (from the latest checkpoint when ``resume``) and return the result."""
        try:
            self._setup(resume)
            return self._run()
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.dist is not None:
                distributed.cleanup_distributed(self.dist)

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm

        config = self.config
        batches = self._micro_batches()
        wants_figures = getattr(self.task, "on_figure", None) is not None
        figure_batch = self._figure_batch() if self.dist.is_main and wants_figures else None
        progress = tqdm(
            total=config.max_steps,
            initial=self.step,
            disable=not (self.dist.is_main and config.progress_bar),
            desc="train",
            dynamic_ncols=True,
        )
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        metrics: dict[str, float] = {}
        while self.step < config.max_steps:
            step_metrics = self._train_step(batches)
            self.step += 1
            progress.update(1)
            for name, value in step_metrics.items():
                window[name] = window.get(name, 0.0) + value
            window_steps += 1
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics = {name: total / window_steps for name, total in window.items()}
                metrics["images_per_s"] = window_steps * config.batch_size / max(elapsed, 1e-9)
                self._log(metrics, progress)
                window, window_steps, window_start = {}, 0, time.perf_counter()
            self._periodic_hooks(figure_batch)
        progress.close()
        self._finish(figure_batch)
        best = None if self.best is None else {**self.best, "path": self.output_dir / BEST_DIR}
        return TrainResult(self.step, metrics, self.last_checkpoint, self.output_dir, self.history, best)

    def _train_step(self, batches: Iterator[tuple[int, Any]]) -> dict[str, float]:
        """One optimiser step over ``grad_accum_steps`` micro-batches; returns rank-averaged scalars."""
        config = self.config
        self.train_model.train()
        accum = config.grad_accum_steps
        sums: dict[str, torch.Tensor] = {}
        for micro_step in range(accum):
            epoch, batch = next(batches)
            batch = move_to_device(batch, self.device)
            context = StepContext(
                self.step, epoch, micro_step, config.seed, self.device, self.dist.rank, self.dist.world_size, config
            )
            # DDP all-reduces gradients only on the last micro-step of an accumulation.
            syncing = micro_step == accum - 1 or not self.dist.is_distributed
            with contextlib.nullcontext() if syncing else self.train_model.no_sync():
                with _autocast(config.precision, self.device):
                    outputs = self.task.training_step(self.train_model, batch, context)
                loss = outputs["loss"]
                self.scaler.scale(loss / accum).backward()
            for name, value in outputs.items():
                value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                sums[name] = sums.get(name, 0.0) + value.to(self.device) / accum
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), max_norm=config.clip_grad if config.clip_grad else float("inf")
        )
        names = list(sums)
        # One all-reduce and one device sync per step: the logged means, and the NaN guard sees
        # every rank's loss (all ranks must stop together or the others hang).
        packed = torch.stack([sums[name] for name in names] + [grad_norm.float()])
        values = (distributed.all_reduce_sum(packed) / self.dist.world_size).tolist()
        step_metrics = dict(zip(names, values[:-1]))
        step_metrics["grad_norm"] = values[-1]
        self._guard_finite(step_metrics)
        step_metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if config.weight_decay_end is not None:
            step_metrics["weight_decay"] = self._apply_weight_decay_schedule()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():
            step_metrics["loss_scale"] = self.scaler.get_scale()
        with warnings.catch_warnings():
            # Under fp16 the GradScaler skips steps whose gradients overflowed; the schedule is
            # per iteration and moves on anyway, which torch would otherwise warn about.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)
        return step_metrics

    def _apply_weight_decay_schedule(self) -> float:
        config = self.config
        decay = cosine_weight_decay(self.step, max_steps=config.max_steps, start=config.weight_decay, end=config.weight_decay_end)
        for group in self.optimizer.param_groups:
            if group["weight_decay"] > 0:  # the no-decay groups stay at exactly 0
                group["weight_decay"] = decay
        return decay

    def _guard_finite(self, step_metrics: dict[str, float]) -> None:
        step = self.step + 1  # 1-based, as in logs and checkpoint names
        if not math.isfinite(step_metrics["loss"]):
            raise NonFiniteLossError(step, "the loss", step_metrics["loss"], self.last_checkpoint)
        # Under fp16 an inf gradient is an overflow the GradScaler skips and recovers from.
        if self.config.precision != "fp16" and not math.isfinite(step_metrics["grad_norm"]):
            raise NonFiniteLossError(step, "the gradient norm", step_metrics["grad_norm"], self.last_checkpoint)

    def _log(self, metrics: dict[str, float], progress) -> None:
        record = {"step": self.step, "epoch": self.epoch, **metrics}
        self.history.append(record)
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(_json_line(record))
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", value, self.step)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)
        log.info(
            "step %d/%d  %s",
            self.step,
            self.config.max_steps,
            "  ".join(f"{name} {value:.4g}" for name, value in metrics.items()),
        )

    def _periodic_hooks(self, figure_batch: Any) -> None:
        config = self.config
        # Figures and validation before the checkpoint of the same step: the checkpoint then holds
        # the best-so-far they produced and the RNG state after them, so a resumed run continues
        # exactly as an uninterrupted one.
        if config.figure_every and self.step % config.figure_every == 0 and self.step < config.max_steps:
            self._make_figure(figure_batch)
        if config.validate_every and self.step % config.validate_every == 0 and self.step < config.max_steps:
            self._validate()
        if config.save_checkpoints and config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
            self.save_checkpoint()

    def _finish(self, figure_batch: Any) -> None:
        self._make_figure(figure_batch)
        self._validate()
        if self.config.save_checkpoints and (
            self.last_checkpoint is None or self.last_checkpoint.name != ckpt.checkpoint_name(self.step)
        ):
            self.save_checkpoint()
        on_end = getattr(self.task, "on_train_end", None)
        if on_end is not None and self.dist.is_main:
            ema = None if self.ema_model is None else self.ema_model.module
            on_end(ckpt.unwrap_model(self.model), ema, self.output_dir)
        distributed.barrier()

    def _make_figure(self, figure_batch: Any) -> None:
        hook = getattr(self.task, "on_figure", None)
        if hook is None or not self.dist.is_main or figure_batch is None:
            return
        model = ckpt.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            hook(model, move_to_device(figure_batch, self.device), self.step, self.output_dir / "figures")
        model.train(was_training)

    def _validate(self) -> None:
        hook = getattr(self.task, "validate", None)
        if hook is not None and self.dist.is_main:
            model = ckpt.unwrap_model(self.model)
            model.eval()
            with torch.no_grad():
                results = hook(model, self.step)
            model.train()
            record = {"step": self.step, **{f"val/{k}": float(v) for k, v in results.items()}}
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(_json_line(record))
            if self.writer is not None:
                for name, value in results.items():
                    self.writer.add_scalar(f"val/{name}", float(value), self.step)
            self._keep_if_best(model, results)
        distributed.barrier()

    def _keep_if_best(self, model: nn.Module, results: dict[str, Any]) -> None:
        """Save ``model`` to ``<output_dir>/best`` when ``results[select_metric]`` beats the best so far."""
        name = self.config.select_metric
        if name is None:
            return
        if name not in results:
            raise ConfigError("train.select_metric", f"{name!r} is not among the validation results {sorted(results)}")
        value = float(results[name])
        if not math.isfinite(value):
            log.warning("validation %s is %s at step %d: not a candidate for the best weights", name, value, self.step)
            return
        if self.best is not None:
            previous = self.best["value"]
            if value <= previous if self.config.select_mode == "max" else value >= previous:
                return
        self.best = {"step": self.step, "metric": name, "value": value}
        replace_folder(self.output_dir / BEST_DIR, lambda folder: _write_best(folder, model, self.best))
        log.info("best %s so far: %.4g at step %d (saved to %s)", name, value, self.step, self.output_dir / BEST_DIR)

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Save on rank 0 (every rank contributes its RNG state); all ranks wait for it."""
        rng_states = distributed.all_gather_objects(capture_rng_state())
        if self.dist.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "epoch_offset": self.epoch_offset,
                "world_size": self.dist.world_size,
                "batch_size": self.config.batch_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": None if self.ema_model is None else self.ema_model.state_dict(),
                "rng": rng_states,
                "best": self.best,
                "train_config": to_dict(self.config),
            }
            path = ckpt.save_checkpoint(self.checkpoints_dir, self.step, self.model, state, keep=self.config.keep_checkpoints)
        else:
            path = self.checkpoints_dir / ckpt.checkpoint_name(self.step)
        distributed.barrier()
        self.last_checkpoint = path
        return path

    def _load_train_state(self, checkpoint_dir: Path) -> None:
        # Keys and types are checked first; any part that does not fit is a CheckpointError naming it.
        state = ckpt.load_trainer_state(checkpoint_dir)
        if state["batch_size"] != self.config.batch_size:
            raise ConfigError(
                "train.batch_size",
                f"checkpoint {checkpoint_dir} was trained with global batch {state['batch_size']}, not {self.config.batch_size}; "
                "the data position would not line up",
            )
        self.step, self.epoch, self.epoch_offset = int(state["step"]), int(state["epoch"]), int(state["epoch_offset"])
        for key, target in (("optimizer", self.optimizer), ("scheduler", self.scheduler), ("scaler", self.scaler)):
            ckpt.restore_state(target, state[key], key, checkpoint_dir)
        if self.ema_model is not None and state["ema"] is not None:
            ckpt.restore_state(self.ema_model, state["ema"], "ema", checkpoint_dir)
        self.best = state.get("best")  # checkpoints written before best tracking have none
        rng_states = state["rng"]
        if self.dist.rank < len(rng_states):
            with ckpt.restoring("rng", checkpoint_dir):
                restore_rng_state(rng_states[self.dist.rank])
        else:
            log.warning("checkpoint has no RNG state for rank %d (saved with %d ranks)", self.dist.rank, len(rng_states))
        self.last_checkpoint = checkpoint_dir
        log.info("resumed from %s at step %d (epoch %d, %d samples into it)", checkpoint_dir, self.step, self.epoch, self.epoch_offset)
