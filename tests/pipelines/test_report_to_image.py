"""Report -> image with tiny randomly initialised parts (no training: the loop, not the pictures, is
under test) and the real packaged MiniLM: shapes and range, seeding, guidance, the DKIM hint path,
argument errors, and loading a run folder stage by stage."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from cxrfm.errors import CheckpointError
from cxrfm.models.diffusion.adapter import ControlledUViT
from cxrfm.models.diffusion.autoencoder import build_autoencoder
from cxrfm.models.diffusion.text import ImageTower, ReportEncoder, ReportEncoderConfig, ReportImageContrast
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig
from cxrfm.models.vit import VisionTransformer, vit_config
from cxrfm.pipelines.report_to_image import (
    NO_FINDING_HINT,
    ReportToImagePipeline,
    disease_hint,
    load_scheduler,
    run_paths,
)

# diffusers' DPM-Solver builds its sigmas with np.array(tensor), which NumPy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SIZE, CONDITION_TOKENS = 32, 3  # 32² images -> 4 x 4 x 4 latents; 3 squeezed condition tokens
REPORTS = ["Cardiomegaly.", "Moderate left pleural effusion.", "The lungs are clear.", "Mild pulmonary edema."]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A run folder of untrained parts, as the recipe lays it out (the adapter stage left out)."""
    torch.manual_seed(0)
    autoencoder = build_autoencoder("kl-f8-tiny-cpu", SIZE)
    report_encoder = ReportEncoder(ReportEncoderConfig(condition_tokens=CONDITION_TOKENS))
    fields = dict(UVIT_PRESETS["uvit-tiny-cpu"], latent_size=SIZE // 8, context_length=CONDITION_TOKENS, depth=2)
    denoiser = UViT(UViTConfig(**fields))
    vit = VisionTransformer(vit_config("vit-tiny-cpu", image_size=(SIZE, SIZE), patch_size=(8, 8), embed_dim=16, depth=1, num_heads=2))
    schedule = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             prediction_type="epsilon", clip_sample=False)
    run = tmp_path_factory.mktemp("diff-cxr-parts") / "run"
    paths = run_paths(run)
    autoencoder.save_pretrained(paths["autoencoder"])
    ReportImageContrast(report_encoder, ImageTower(vit, 384)).save_pretrained(paths["text"])
    denoiser.save_pretrained(paths["denoiser"])
    schedule.save_config(str(paths["denoiser"]))
    return dict(autoencoder=autoencoder, report_encoder=report_encoder, denoiser=denoiser, run=run)


@pytest.fixture(scope="module")
def pipe(parts):
    return ReportToImagePipeline(parts["autoencoder"], parts["report_encoder"], parts["denoiser"],
                                 load_scheduler(run_paths(parts["run"])["scheduler"]))


def generate(pipe, reports=REPORTS[:2], **options):
    settings = dict(num_inference_steps=3, guidance_scale=3.0, generator=seeded(0), progress=False)
    return pipe(reports, **{**settings, **options})


def test_disease_hint_names_positive_findings_or_no_finding():
    assert disease_hint("The heart is enlarged, consistent with cardiomegaly.") == "There is cardiomegaly."
    assert disease_hint("Moderate left pleural effusion. Cardiomegaly.") == "There is cardiomegaly. There is pleural effusion."
    for normal in ("No acute cardiopulmonary abnormality.", "The lungs are clear. No pleural effusion or pneumothorax.", ""):
        assert disease_hint(normal) == NO_FINDING_HINT == "There is no finding."


def test_images_have_the_autoencoders_shape_and_range_and_latents_its_latent_shape(pipe):
    images = generate(pipe)
    assert images.shape == (2, 1, SIZE, SIZE) and images.device.type == "cpu"
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and torch.isfinite(images).all()
    latents = generate(pipe, output="latents")
    assert latents.shape == (2, 4, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        torch.testing.assert_close(pipe.autoencoder.decode(latents), images)
    assert generate(pipe, "Cardiomegaly.").shape == (1, 1, SIZE, SIZE)  # one string is one report


def test_a_seed_fixes_the_result_and_another_seed_changes_it(pipe):
    first = generate(pipe, generator=seeded(5))
    assert torch.equal(first, generate(pipe, generator=seeded(5)))  # the scheduler's state resets per call
    assert not torch.allclose(first, generate(pipe, generator=seeded(6)))


def test_guidance_changes_the_result_and_scale_one_is_the_conditional_branch_alone(pipe):
    plain = generate(pipe, guidance_scale=1.0, output="latents")
    guided = generate(pipe, guidance_scale=3.0, output="latents")
    assert not torch.allclose(plain, guided)
    # Scale 0 keeps only the unconditional (all-zero context) branch: every report gives the same
    # latents from the same noise.
    unconditional = generate(pipe, ["Cardiomegaly.", "Cardiomegaly."], guidance_scale=0.0, output="latents", generator=seeded(1))
    other = generate(pipe, ["Cardiomegaly.", "Mild pulmonary edema."], guidance_scale=0.0, output="latents", generator=seeded(1))
    torch.testing.assert_close(unconditional, other, rtol=1e-5, atol=1e-5)


def test_the_first_batch_is_reproducible_whatever_follows_it(pipe):
    # Batch-size invariance is NOT promised: the generator is drawn once per batch (so the noise of
    # rows after the first batch depends on how the reports are split), and a different batch
    # shape runs different matmul kernels whose rounding the multistep sampler carries forward.
    # What is promised: a seed and a batch size fix the result, so the first batch is the same
    # whether or not more batches follow it.
    alone = generate(pipe, REPORTS[:2], batch_size=2)
    assert torch.equal(generate(pipe, REPORTS, batch_size=2)[:2], alone)
    assert generate(pipe, REPORTS, batch_size=3).shape == (4, 1, SIZE, SIZE)


def test_the_ddim_sampler_runs_and_differs_from_dpm_solver(parts, pipe):
    ddim = ReportToImagePipeline(parts["autoencoder"], parts["report_encoder"], parts["denoiser"],
                                 load_scheduler(run_paths(parts["run"])["scheduler"], "ddim"))
    assert not torch.allclose(generate(ddim, output="latents"), generate(pipe, output="latents"))
    with pytest.raises(ValueError, match="unknown sampler"):
        load_scheduler(run_paths(parts["run"])["scheduler"], "euler")


def test_with_a_dkim_adapter_the_hint_conditions_the_denoiser(parts, pipe):
    controlled = ControlledUViT(parts["denoiser"])
    dkim = ReportToImagePipeline(parts["autoencoder"], parts["report_encoder"], controlled, pipe.scheduler)
    assert dkim.uses_hint and not pipe.uses_hint
    context, hint = dkim.conditions(REPORTS[:2])
    _, expected_hint = parts["report_encoder"].encode([disease_hint(report) for report in REPORTS[:2]])
    torch.testing.assert_close(hint, expected_hint)
    assert hint.shape == context.shape == (2, CONDITION_TOKENS, 384)
    # The adapter's output layers start at zero, so an untrained DKIM model samples like its base ...
    torch.testing.assert_close(generate(dkim, output="latents"), generate(pipe, output="latents"), rtol=1e-4, atol=1e-5)
    # ... and once they are not zero, the hint path changes the result.
    perturbed = ControlledUViT(parts["denoiser"])
    with torch.no_grad():
        for parameter in perturbed.adapter.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=seeded(2)))
    steered = ReportToImagePipeline(parts["autoencoder"], parts["report_encoder"], perturbed, pipe.scheduler)
    images = generate(steered)
    assert images.shape == (2, 1, SIZE, SIZE) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert not torch.allclose(generate(steered, output="latents"), generate(pipe, output="latents"))


@pytest.mark.parametrize("reports, options, message", [
    ([], {}, "no reports"),
    (REPORTS[:1], {"num_inference_steps": 0}, "num_inference_steps"),
    (REPORTS[:1], {"guidance_scale": -1.0}, "guidance_scale"),
])
def test_bad_arguments_raise_value_errors(pipe, reports, options, message):
    with pytest.raises(ValueError, match=message):
        generate(pipe, reports, **options)


def test_from_pretrained_loads_the_run_folder_and_generates_as_the_parts_do(parts, pipe):
    loaded = ReportToImagePipeline.from_pretrained(parts["run"])
    assert not loaded.uses_hint and loaded.device.type == "cpu"
    torch.testing.assert_close(generate(loaded), generate(pipe))
    with pytest.raises(CheckpointError, match="adapter") as error:
        ReportToImagePipeline.from_pretrained(parts["run"], use_adapter=True)
    assert str(run_paths(parts["run"])["adapter"]) in str(error.value)


def test_from_pretrained_with_an_adapter_stage_takes_it_unless_told_not_to(parts, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(parts["run"], run)
    ControlledUViT(parts["denoiser"]).save_pretrained(run_paths(run)["adapter"])
    assert ReportToImagePipeline.from_pretrained(run).uses_hint
    assert not ReportToImagePipeline.from_pretrained(run, use_adapter=False).uses_hint


@pytest.mark.parametrize("stage", ["autoencoder", "text", "denoiser", "scheduler"])
def test_from_pretrained_on_a_run_missing_a_stage_is_a_checkpoint_error_naming_the_path(parts, tmp_path, stage):
    run = tmp_path / "run"
    shutil.copytree(parts["run"], run)
    missing = run_paths(run)[stage]
    missing.unlink() if missing.is_file() else shutil.rmtree(missing)
    with pytest.raises(CheckpointError) as error:
        ReportToImagePipeline.from_pretrained(run)
    assert str(missing) in str(error.value)
