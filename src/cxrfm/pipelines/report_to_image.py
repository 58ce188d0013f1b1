"""Report -> chest X-ray with a trained Diff-CXR run folder.

    pipe = ReportToImagePipeline.from_pretrained("runs/diff-cxr-tiny-phantom")
    images = pipe(["Moderate left pleural effusion."], num_inference_steps=25, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0))      # (1, 1, H, W) in [0, 1]

The loop is written out here (diffusers' pipelines are models + loops; ours are cxrfm models):
report states -> squeezed condition tokens -> Gaussian latents -> ``num_inference_steps`` of
DPM-Solver++ (diffusers' :class:`~diffusers.DPMSolverMultistepScheduler`, built from the training
DDPM schedule) with classifier-free guidance -> the autoencoder's decoder.

Guidance runs the conditional and the unconditional (all-zero context: what condition dropout
trained) branches as one batch: ``eps = eps_u + s (eps_c - eps_u)``; ``s = 1`` skips the
unconditional branch. With a DKIM adapter in the run, the hint ("There is {disease}." for each
positive finding our labeler reads in the report, "There is no finding." otherwise) conditions it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cxrfm.errors import CheckpointError
from cxrfm.evaluation.chexpert_labeler import label_report
from cxrfm.models.diffusion.adapter import ControlledUViT
from cxrfm.models.diffusion.autoencoder import CXRAutoencoder
from cxrfm.models.diffusion.text import ReportEncoder, ReportImageContrast
from cxrfm.models.diffusion.uvit import UViT
from cxrfm.utils.runtime import resolve_device

SCHEDULER_FILE = "scheduler_config.json"
NO_FINDING_HINT = "There is no finding."
# The labeler's observations that name a disease (No Finding and Support Devices do not).
HINT_OBSERVATIONS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
)


def disease_hint(report: str) -> str:
    """DKIM's disease-knowledge text of a report: "There is cardiomegaly. There is pleural effusion."
    for its positive observations (our CheXpert-style labeler; the paper uses CheXbert), or
    "There is no finding."."""
    labels = label_report(report or "")
    positives = [name.lower() for name in HINT_OBSERVATIONS if labels.get(name) == 1]
    return " ".join(f"There is {name}." for name in positives) or NO_FINDING_HINT


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    """Where each stage of a Diff-CXR run keeps its model."""
    run_dir = Path(run_dir)
    return {
        "autoencoder": run_dir / "autoencoder" / "model",
        "text": run_dir / "text" / "model",
        "denoiser": run_dir / "denoiser" / "model",
        "adapter": run_dir / "adapter" / "model",
        "scheduler": run_dir / "denoiser" / "model" / SCHEDULER_FILE,
    }


def load_scheduler(path: Path, kind: str = "dpm-solver"):
    """The sampler for a saved DDPM training schedule: ``dpm-solver`` (DPM-Solver++ 2M) or ``ddim``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if not path.is_file():
        raise CheckpointError(path, "missing: the denoiser stage writes the noise schedule beside its model")
    config = json.loads(path.read_text(encoding="utf-8"))
    if kind == "dpm-solver":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"unknown sampler {kind!r} (known: dpm-solver, ddim)")


class ReportToImagePipeline:
    """``__call__(reports) -> (N, 1, H, W)`` images in [0, 1]; see the module docstring."""

    def __init__(self, autoencoder: CXRAutoencoder, report_encoder: ReportEncoder, denoiser: torch.nn.Module, scheduler):
        self.autoencoder, self.report_encoder, self.denoiser = autoencoder.eval(), report_encoder.eval(), denoiser.eval()
        self.scheduler = scheduler
        self.uses_hint = isinstance(denoiser, ControlledUViT)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, *, use_adapter: bool | None = None, sampler: str = "dpm-solver",
                        device: str | torch.device = "cpu") -> "ReportToImagePipeline":
        """``use_adapter``: None takes the DKIM model when the run has one, True requires it, False
        takes the plain U-ViT."""
        paths = run_paths(run_dir)
        has_adapter = (paths["adapter"] / "config.json").is_file()
        if use_adapter and not has_adapter:
            raise CheckpointError(paths["adapter"], "missing: this run has no trained DKIM adapter (run the adapter stage)")
        denoiser = ControlledUViT.from_pretrained(paths["adapter"]) if (has_adapter and use_adapter is not False) \
            else UViT.from_pretrained(paths["denoiser"])
        device = resolve_device(device)
        return cls(
            CXRAutoencoder.from_pretrained(paths["autoencoder"]).to(device),
            ReportImageContrast.from_pretrained(paths["text"]).report_encoder.to(device),
            denoiser.to(device), load_scheduler(paths["scheduler"], sampler),
        )

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @torch.no_grad()
    def conditions(self, reports: list[str]) -> list[torch.Tensor]:
        """The denoiser's conditions of ``reports``: ``[context (N, L, 384)]`` plus the hint with DKIM."""
        _, context = self.report_encoder.encode(list(reports))
        if not self.uses_hint:
            return [context]
        _, hint = self.report_encoder.encode([disease_hint(report) for report in reports])
        return [context, hint]

    @torch.no_grad()
    def __call__(self, reports: list[str] | str, *, num_inference_steps: int = 25, guidance_scale: float = 3.0,
                 generator: torch.Generator | None = None, batch_size: int = 16, progress: bool = True,
                 output: str = "images") -> torch.Tensor:
        """Images ``(N, 1, H, W)`` in [0, 1] (``output="latents"``: the ``(N, 4, h, w)`` latents).

        ``generator`` (a CPU ``torch.Generator``) seeds the initial noise of every batch in turn, so
        a seed and a batch size fix the result."""
        reports = [reports] if isinstance(reports, str) else list(reports)
        if not reports:
            raise ValueError("no reports to generate images for")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if output not in ("images", "latents"):
            raise ValueError(f"output must be 'images' or 'latents', got {output!r}")
        outputs = []
        batches = range(0, len(reports), batch_size)
        bar = tqdm(total=len(batches) * num_inference_steps, desc="report -> image", unit="step", disable=not progress)
        for start in batches:
            chunk = reports[start : start + batch_size]
            latents = self.sample_latents(self.conditions(chunk), num_inference_steps, guidance_scale, generator, bar)
            outputs.append(latents if output == "latents" else self.autoencoder.decode(latents))
        bar.close()
        return torch.cat(outputs).cpu()

    def sample_latents(self, conditions, num_inference_steps, guidance_scale, generator, bar=None) -> torch.Tensor:
        """The reverse process for one batch of conditions -> clean latents ``(B, 4, h, w)``."""
        count = conditions[0].shape[0]
        shape = (count, *self.autoencoder.config.latent_shape)
        latents = torch.randn(shape, generator=generator).to(self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        guided = guidance_scale != 1.0
        if guided:  # conditional rows first, then the unconditional (all-zero) ones
            conditions = [torch.cat([condition, torch.zeros_like(condition)]) for condition in conditions]
        for timestep in self.scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, timestep)
            steps = torch.full((model_input.shape[0],), int(timestep), device=self.device, dtype=torch.long)
            noise = self.denoiser(model_input, steps, *conditions)
            if guided:
                conditional, unconditional = noise.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, timestep, latents).prev_sample
            if bar is not None:
                bar.update(1)
        return latents
