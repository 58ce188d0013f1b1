"""Diff-CXR sampling speed at 256²: U-ViT-S/2 + DPM-Solver++ with classifier-free guidance, then the decoder.

    .venv/bin/python benchmarks/diffusion_sampling_speed.py --device cpu --threads 1 --batch-size 4 --repeats 1
    .venv/bin/python benchmarks/diffusion_sampling_speed.py --device cuda --batch-size 16 --repeats 3 --dtype bf16

The pieces of :class:`~cxrfm.pipelines.report_to_image.ReportToImagePipeline` at the paper's scale,
randomly initialised (speed does not depend on the weights): the U-ViT-S/2 denoiser (preset
``uvit-s-2``: 512 wide, 12 + 1 blocks, patch 2) on ``4 x 32 x 32`` latents with ``77 x 384``
condition tokens; diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M) built from a
``DDPMScheduler`` with SD's schedule (scaled linear β 0.00085-0.012, 1,000 steps, ε-prediction), as
:func:`~cxrfm.pipelines.report_to_image.load_scheduler` builds it from a trained run; and the
``kl-f8`` autoencoder (SD's widths) at 256². Sampling is the pipeline's own loop
(``sample_latents``), fed precomputed random conditions instead of the report encoder (MiniLM is
not timed), guidance on (``--guidance`` != 1), so each step is one forward of ``2 x batch`` latents.
The decode of the final latents is timed separately.

Printed: denoiser seconds per step (one batch), seconds per image for the reverse process, decode
seconds per image, their total, the analytic GFLOPs of one U-ViT forward per latent
(:func:`cxrfm.models.flops.uvit_flops_per_image`, beside torch's FlopCounterMode count of the same
forward) and the achieved GFLOP/s of the denoiser loop (analytic FLOPs x 2 x batch x steps / its
seconds), and the decoder's FlopCounterMode GFLOPs per image. Each of ``--repeats`` runs is timed
after one untimed warm-up step and one warm-up decode; the table gives the median run (all runs are
in ``--json``). References: the paper's 1.295 s/image (Table IV, A100, batch and step count not
stated) and the issue's GPU goal of <= 0.05 s/image batched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cxrfm.models.diffusion.autoencoder import build_autoencoder
from cxrfm.models.diffusion.text import ReportEncoder, ReportEncoderConfig
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig
from cxrfm.models.flops import uvit_flops_per_image
from cxrfm.pipelines.report_to_image import ReportToImagePipeline

PAPER_SECONDS_PER_IMAGE = 1.295  # shared/papers/003 Table IV (A100)
GPU_GOAL_SECONDS_PER_IMAGE = 0.05  # the goal, batched, on a GPU
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sd_dpm_solver():
    """DPM-Solver++ 2M from SD's DDPM training schedule (what ``load_scheduler`` builds from a run)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False)
    return DPMSolverMultistepScheduler.from_config(ddpm.config, algorithm_type="dpmsolver++", solver_order=2)


def build_pipeline(args: argparse.Namespace, device: torch.device) -> ReportToImagePipeline:
    latent = args.image_size // 8
    denoiser = UViT(UViTConfig(**UVIT_PRESETS[args.preset], latent_size=latent, in_channels=4, context_length=args.context_length))
    autoencoder = build_autoencoder(args.autoencoder, args.image_size)
    # The report encoder is never run (conditions are given); it only completes the pipeline.
    report_encoder = ReportEncoder(ReportEncoderConfig(condition_tokens=args.context_length))
    return ReportToImagePipeline(autoencoder.to(device), report_encoder, denoiser.to(device), sd_dpm_solver())


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def time_run(pipe: ReportToImagePipeline, args: argparse.Namespace, device: torch.device, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    conditions = [torch.randn(args.batch_size, args.context_length, 384, generator=generator).to(device)]
    with autocast(device, args.dtype):
        synchronise(device)
        started = time.perf_counter()
        latents = pipe.sample_latents(conditions, args.steps, args.guidance, generator)
        synchronise(device)
        sampled = time.perf_counter()
        images = pipe.autoencoder.decode(latents.to(next(pipe.autoencoder.parameters()).dtype))
        synchronise(device)
        decoded = time.perf_counter()
    assert images.shape == (args.batch_size, 1, args.image_size, args.image_size), images.shape
    denoise, decode = sampled - started, decoded - sampled
    return {"denoise_seconds": denoise, "decode_seconds": decode, "seconds_per_step": denoise / args.steps,
            "denoise_seconds_per_image": denoise / args.batch_size, "decode_seconds_per_image": decode / args.batch_size,
            "seconds_per_image": (denoise + decode) / args.batch_size}


@torch.no_grad()
def counted_gflops(pipe: ReportToImagePipeline, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """torch FlopCounterMode GFLOPs of one U-ViT forward and one decode, per latent / image (batch 1)."""
    latent = torch.randn(1, *pipe.autoencoder.config.latent_shape, device=device)
    context = torch.randn(1, args.context_length, 384, device=device)
    with FlopCounterMode(display=False) as denoiser_count:
        pipe.denoiser(latent, torch.full((1,), 500, device=device, dtype=torch.long), context)
    with FlopCounterMode(display=False) as decoder_count:
        pipe.autoencoder.decode(latent)
    return denoiser_count.get_total_flops() / 1e9, decoder_count.get_total_flops() / 1e9


@torch.no_grad()
def warm_up(pipe: ReportToImagePipeline, args: argparse.Namespace, device: torch.device) -> None:
    conditions = [torch.zeros(args.batch_size, args.context_length, 384, device=device)]
    with autocast(device, args.dtype):
        latents = pipe.sample_latents(conditions, 1, args.guidance, torch.Generator().manual_seed(0))
        pipe.autoencoder.decode(latents.to(next(pipe.autoencoder.parameters()).dtype))
    synchronise(device)


def attention_gflops(config: UViTConfig) -> float:
    """The analytic ``Q·Kᵀ`` and ``scores·V`` GFLOPs of one forward (``4·T²·D`` a block, ``depth + 1`` blocks):
    torch's FlopCounterMode does not count the fused CPU attention kernel, so its total falls short by this."""
    return (config.depth + 1) * 4 * config.num_tokens**2 * config.embed_dim / 1e9


def table(result: dict) -> str:
    median = result["median"]
    gflops = result["gflops_per_forward"]
    lines = [
        (f"| denoiser s/step (batch {result['args']['batch_size']}, {result['forwards_per_step']} latent forwards) | denoise s/image | "
         "decode s/image | total s/image | GFLOPs/forward (analytic / counted) | achieved GFLOP/s | decode GFLOPs/image (counted) |"),
        "|---|---|---|---|---|---|---|",
        (f"| {median['seconds_per_step']:.3f} | {median['denoise_seconds_per_image']:.3f} | {median['decode_seconds_per_image']:.3f} | "
         f"{median['seconds_per_image']:.3f} | {gflops:.2f} / {result['counted_gflops_per_forward']:.2f} | "
         f"{result['achieved_gflops_per_second']:.1f} | {result['counted_decode_gflops_per_image']:.1f} |"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = off: one forward a step)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the median is printed)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype for the denoiser and decoder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--preset", default="uvit-s-2", choices=list(UVIT_PRESETS))
    parser.add_argument("--autoencoder", default="kl-f8", help="an AUTOENCODER_PRESETS key")
    parser.add_argument("--context-length", type=int, default=77, help="condition tokens (77: squeezed; 256: MiniLM's states)")
    parser.add_argument("--json", default=None, help="also write the settings and every run here")
    args = parser.parse_args()
    if args.image_size % 8 or args.image_size < 16:
        parser.error("--image-size must be a multiple of 8 (>= 16)")
    for name in ("batch_size", "steps", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    started = time.time()
    pipe = build_pipeline(args, device)
    warm_up(pipe, args, device)
    runs = [time_run(pipe, args, device, seed) for seed in range(args.repeats)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    gflops = uvit_flops_per_image(pipe.denoiser.config) / 1e9
    forwards_per_step = (2 if args.guidance != 1.0 else 1) * args.batch_size
    counted, decode_counted = counted_gflops(pipe, args, device)
    result = {
        "args": vars(args), "runs": runs, "median": median, "gflops_per_forward": gflops, "counted_gflops_per_forward": counted,
        "counted_decode_gflops_per_image": decode_counted, "forwards_per_step": forwards_per_step,
        "attention_gflops_per_forward": attention_gflops(pipe.denoiser.config),
        "achieved_gflops_per_second": gflops * forwards_per_step * args.steps / median["denoise_seconds"],
        "denoiser_parameters_millions": sum(p.numel() for p in pipe.denoiser.parameters()) / 1e6,
        "autoencoder_parameters_millions": sum(p.numel() for p in pipe.autoencoder.parameters()) / 1e6,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "host": platform.processor() or platform.machine(), "torch": torch.__version__, "weights": "random init",
        "paper_seconds_per_image": PAPER_SECONDS_PER_IMAGE, "gpu_goal_seconds_per_image": GPU_GOAL_SECONDS_PER_IMAGE,
    }
    print(table(result))  # noqa: T201 - the benchmark's output
    goal = ("not measured here (no GPU)" if device.type != "cuda" else
            ("met" if median["seconds_per_image"] <= GPU_GOAL_SECONDS_PER_IMAGE else "not met") + " on this GPU")
    print(  # noqa: T201
        f"\n{args.preset} ({result['denoiser_parameters_millions']:.1f}M) on 4x{args.image_size // 8}x{args.image_size // 8} latents, "
        f"context {args.context_length} x 384; DPM-Solver++ 2M, {args.steps} steps, guidance {args.guidance:g} "
        f"({forwards_per_step} latent forwards a step); {args.autoencoder} decoder ({result['autoencoder_parameters_millions']:.1f}M) "
        f"at {args.image_size}²; batch {args.batch_size}, {args.dtype}, median of {args.repeats} run(s) after a warm-up.\n"
        f"Counted = torch FlopCounterMode (matmuls and convolutions; the fused attention kernel is not counted on CPU: "
        f"counted + analytic attention {result['attention_gflops_per_forward']:.2f} = "
        f"{result['counted_gflops_per_forward'] + result['attention_gflops_per_forward']:.2f} GFLOPs).\n"
        f"Weights are randomly initialised: speed does not depend on training. Report encoder (MiniLM) not timed.\n"
        f"Device {result['device']} ({result['host']}), {args.threads} thread(s), torch {torch.__version__}; "
        f"{time.time() - started:.0f} s in all.\n"
        f"Reference: the paper's 1.295 s/image (Table IV, A100; batch and steps not stated). "
        f"The issue's goal <= {GPU_GOAL_SECONDS_PER_IMAGE} s/image batched on a GPU: {goal}."
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
