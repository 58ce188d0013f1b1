"""Diff-CXR's training objectives: ε-prediction with diffusers' DDPM noising and condition dropout,
InfoNCE with retrieval validation, the autoencoder's L1 + KL with PSNR validation; and the
retrieval score they report (evaluation/retrieval.py) on hand-made similarity matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.utils.data import TensorDataset

from cxrfm.data.sample import CXRSample
from cxrfm.evaluation.retrieval import recall_at_k
from cxrfm.models.diffusion.adapter import ControlledUViT
from cxrfm.models.diffusion.autoencoder import build_autoencoder
from cxrfm.models.diffusion.text import ImageTower, ReportEncoder, ReportEncoderConfig, ReportImageContrast
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig
from cxrfm.models.vit import VisionTransformer, vit_config
from cxrfm.training.contract import StepContext, TrainConfig
from cxrfm.training.tasks.autoencoder import AutoencoderTask
from cxrfm.training.tasks.contrastive import ContrastiveTask, embed_pairs
from cxrfm.training.tasks.diffusion import DiffusionTask

CONTEXT_LENGTH, CONTEXT_DIM = 3, 8


def context(step: int = 0) -> StepContext:
    return StepContext(step=step, epoch=0, micro_step=0, seed=0, device=torch.device("cpu"), rank=0, world_size=1,
                       config=TrainConfig(output_dir="unused", tensorboard=False))


def scheduler() -> DDPMScheduler:
    # The recipe's schedule (SD's scaled-linear betas), as the denoiser stage builds it.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False)


def tiny_uvit() -> UViT:
    torch.manual_seed(0)
    fields = dict(UVIT_PRESETS["uvit-tiny-cpu"], latent_size=4, context_length=CONTEXT_LENGTH, context_dim=CONTEXT_DIM, depth=2)
    return UViT(UViTConfig(**fields))


def diffusion_batch(count: int, seed: int = 0, hint: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    parts = [torch.randn(count, 4, 4, 4, generator=generator), torch.rand(count, CONTEXT_LENGTH, CONTEXT_DIM, generator=generator) + 0.5]
    if hint:
        parts.append(torch.rand(count, CONTEXT_LENGTH, CONTEXT_DIM, generator=generator) + 0.5)
    return parts


class NoiseOracle(nn.Module):
    """Recovers the noise that ``add_noise`` mixed into known clean latents: exact only if the task
    noised with the scheduler's ``sqrt(ᾱ_t)``, ``sqrt(1 - ᾱ_t)`` at the timesteps it passes on.
    A probe of the task's plumbing, not a denoiser (no real model predicts noise exactly)."""

    def __init__(self, clean: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.clean, self.alphas_cumprod = clean, alphas_cumprod
        self.weight = nn.Parameter(torch.ones(()))  # validate() asks the model for its device
        self.seen: list[tuple] = []

    def forward(self, noisy, timesteps, *conditions):
        self.seen.append((timesteps.clone(), [c.clone() for c in conditions]))
        abar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (noisy - abar.sqrt() * self.clean) / (1 - abar).sqrt() * self.weight


def test_noise_loss_noises_with_the_schedulers_add_noise_at_the_timesteps_given_to_the_model():
    noise_schedule = scheduler()
    latents, condition = diffusion_batch(64)
    oracle = NoiseOracle(latents, noise_schedule.alphas_cumprod)
    task = DiffusionTask(noise_schedule, condition_dropout=0.0)
    loss = task.noise_loss(oracle, [latents, condition], torch.Generator().manual_seed(0))
    assert float(loss.detach()) < 1e-8
    timesteps, conditions = oracle.seen[-1]
    assert timesteps.dtype == torch.long and 0 <= int(timesteps.min()) and int(timesteps.max()) < 1000
    assert len(set(timesteps.tolist())) > 32  # uniform random timesteps, one per item
    assert torch.equal(conditions[0], condition)  # the context is passed through untouched
    # A model that ignores its input scores E[ε²] ≈ 1: the loss is an MSE against unit Gaussian noise.
    oracle.weight.data.zero_()
    assert float(task.noise_loss(oracle, [latents, condition], torch.Generator().manual_seed(0)).detach()) == pytest.approx(1.0, abs=0.1)


def test_condition_dropout_zeroes_context_and_hint_of_the_same_rows_at_rate_p():
    noise_schedule = scheduler()
    latents, condition, hint = diffusion_batch(4000, hint=True)
    oracle = NoiseOracle(latents, noise_schedule.alphas_cumprod)
    torch.manual_seed(0)
    DiffusionTask(noise_schedule, condition_dropout=0.3).training_step(oracle, [latents, condition, hint], context())
    _, (seen_context, seen_hint) = oracle.seen[-1]
    dropped_context = seen_context.abs().sum(dim=(1, 2)) == 0
    dropped_hint = seen_hint.abs().sum(dim=(1, 2)) == 0
    assert torch.equal(dropped_context, dropped_hint)  # one "empty report" row: both conditions go
    assert float(dropped_context.float().mean()) == pytest.approx(0.3, abs=0.03)
    kept = ~dropped_context
    assert torch.equal(seen_context[kept], condition[kept]) and torch.equal(seen_hint[kept], hint[kept])
    DiffusionTask(noise_schedule, condition_dropout=0.0).training_step(oracle, [latents, condition, hint], context())
    assert torch.equal(oracle.seen[-1][1][0], condition)  # p = 0: nothing dropped


def test_diffusion_training_step_trains_a_real_uvit_and_validation_is_deterministic():
    model = tiny_uvit()
    task = DiffusionTask(scheduler(), condition_dropout=0.1, val_set=TensorDataset(*diffusion_batch(10, seed=1)), batch_size=4)
    out = task.training_step(model, diffusion_batch(4), context())
    out["loss"].backward()
    assert math.isfinite(float(out["loss"].detach()))
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    first, second = task.validate(model, 0), task.validate(model, 1)
    assert set(first) == {"loss"} and first == second  # same noise and timesteps every call
    other_seed = DiffusionTask(scheduler(), val_set=task.val_set, batch_size=4, val_seed=1).validate(model, 0)
    assert other_seed["loss"] != first["loss"]
    assert DiffusionTask(scheduler()).validate(model, 0) == {}


def test_diffusion_task_trains_only_the_adapter_of_a_controlled_uvit():
    model = ControlledUViT(tiny_uvit())
    task = DiffusionTask(scheduler(), condition_dropout=0.0, val_set=TensorDataset(*diffusion_batch(6, hint=True)))
    task.training_step(model, diffusion_batch(4, hint=True), context())["loss"].backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    assert math.isfinite(task.validate(model, 0)["loss"])


def test_condition_dropout_outside_0_1_is_refused():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="condition_dropout"):
            DiffusionTask(scheduler(), condition_dropout=bad)


# ----------------------------------------------------------------------------- contrastive
def tiny_contrast() -> ReportImageContrast:
    # Report states are given as tensors, so a short, narrow stand-in for MiniLM's (257, 384) suffices.
    torch.manual_seed(0)
    report_encoder = ReportEncoder(ReportEncoderConfig(max_tokens=6, width=16, condition_tokens=2))
    vit = VisionTransformer(vit_config("vit-tiny-cpu", image_size=(16, 16), patch_size=(8, 8), embed_dim=16, depth=1, num_heads=2))
    return ReportImageContrast(report_encoder, ImageTower(vit, 16))


def pairs(count: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(count, 1, 16, 16, generator=generator), torch.randn(count, 7, 16, generator=generator))


def test_contrastive_step_and_validation_report_loss_and_recall_both_ways():
    model = tiny_contrast()
    task = ContrastiveTask(pairs(7, seed=1), batch_size=3)
    loss = task.training_step(model, pairs(4).tensors, context())["loss"]
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.report_encoder.parameters())
    scores = task.validate(model.eval(), 0)
    assert set(scores) == {"loss", "image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5", "text_to_image_R@5"}
    assert all(0.0 <= scores[key] <= 1.0 for key in scores if "R@" in key)
    images, texts = embed_pairs(model, task.val_pairs, batch_size=3)
    assert images.shape == texts.shape == (7, 16)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(7))  # L2-normalised
    assert {k: v for k, v in scores.items() if "R@" in k} == recall_at_k((images @ texts.T).numpy())
    assert ContrastiveTask(None).validate(model, 0) == {}


# ----------------------------------------------------------------------------- autoencoder
def test_autoencoder_step_crops_and_validation_reports_mse_and_psnr():
    torch.manual_seed(0)
    model = build_autoencoder("kl-f8-tiny-cpu", 32)
    generator = torch.Generator().manual_seed(0)
    val = [CXRSample(image=torch.rand(1, 32, 32, generator=generator)) for _ in range(3)]
    task = AutoencoderTask(val, crop_size=16, batch_size=2)
    out = task.training_step(model, torch.rand(2, 1, 32, 32, generator=generator), context())
    assert set(out) == {"loss", "l1", "kl"} and not out["l1"].requires_grad
    out["loss"].backward()
    assert model.vae.encoder.conv_in.weight.grad is not None
    model.eval()
    scores = task.validate(model, 0)
    with torch.no_grad():
        images = torch.stack([sample.image for sample in val])
        mse = float(((model.decode(model.encode(images)) - images) ** 2).mean())
    assert scores["mse"] == pytest.approx(mse, rel=1e-5)
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert AutoencoderTask(None).validate(model, 0) == {}


# ----------------------------------------------------------------------------- retrieval
def test_recall_at_k_is_one_for_an_identity_similarity():
    assert recall_at_k(np.eye(5), ks=(1, 5)) == {
        "image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0, "image_to_text_R@5": 1.0, "text_to_image_R@5": 1.0}


def test_recall_at_k_counts_ties_against_the_match_and_scores_each_direction():
    similarity = np.array([
        [0.9, 0.9, 0.0],  # row 0: a tie with column 1 -> its own column ranks 2
        [0.0, 0.5, 0.8],  # row 1: column 2 beats the match -> rank 2
        [0.0, 0.0, 0.7],  # row 2: the match is best -> rank 1
    ])
    scores = recall_at_k(similarity, ks=(1, 2))
    assert scores["image_to_text_R@1"] == pytest.approx(1 / 3) and scores["image_to_text_R@2"] == 1.0
    # columns: col 0 match best (rank 1); col 1 has 0.9 above its 0.5 (rank 2); col 2 has 0.8 above 0.7 (rank 2)
    assert scores["text_to_image_R@1"] == pytest.approx(1 / 3) and scores["text_to_image_R@2"] == 1.0
    constant = recall_at_k(np.ones((4, 4)), ks=(1, 3, 4))  # every entry tied: every match ranks last
    assert constant["image_to_text_R@1"] == constant["image_to_text_R@3"] == 0.0 and constant["image_to_text_R@4"] == 1.0


@pytest.mark.parametrize("similarity", [np.ones((2, 3)), np.ones(3), np.zeros((0, 0)), np.array([[1.0, np.nan], [0.0, 1.0]])])
def test_recall_at_k_refuses_non_square_empty_or_non_finite_matrices(similarity):
    with pytest.raises(ValueError, match="similarity"):
        recall_at_k(similarity)
