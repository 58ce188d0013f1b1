"""``cxrfm diffusion``: the verbs in --help, ``sample`` writing PNGs from a saved run (tiny untrained
parts: the command, not the pictures, is under test), one stage run from the command line, and
mistakes ending in one error line. The subprocess sweep of bad arguments is in test_bad_arguments.py."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from cxrfm.cli.main import main
from cxrfm.models.diffusion.autoencoder import build_autoencoder
from cxrfm.models.diffusion.text import ImageTower, ReportEncoder, ReportEncoderConfig, ReportImageContrast
from cxrfm.models.diffusion.uvit import UVIT_PRESETS, UViT, UViTConfig
from cxrfm.models.vit import VisionTransformer, vit_config
from cxrfm.pipelines.report_to_image import run_paths

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

VERBS = ("train", "autoencoder", "filter", "text", "denoiser", "adapter", "evaluate", "sample")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A Diff-CXR run folder of randomly initialised 32² parts, laid out as the recipe writes it."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("diffusion-cli") / "run"
    paths = run_paths(run)
    build_autoencoder("kl-f8-tiny-cpu", 32).save_pretrained(paths["autoencoder"])
    report_encoder = ReportEncoder(ReportEncoderConfig(condition_tokens=3))
    vit = VisionTransformer(vit_config("vit-tiny-cpu", image_size=(32, 32), patch_size=(8, 8), embed_dim=16, depth=1, num_heads=2))
    ReportImageContrast(report_encoder, ImageTower(vit, 384)).save_pretrained(paths["text"])
    UViT(UViTConfig(**{**UVIT_PRESETS["uvit-tiny-cpu"], "latent_size": 4, "context_length": 3, "depth": 2})).save_pretrained(paths["denoiser"])
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False).save_config(str(paths["denoiser"]))
    return run


def test_diffusion_help_lists_every_action(capsys):
    with pytest.raises(SystemExit) as info:
        main(["diffusion", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out, verb


def test_sample_writes_one_png_per_report_and_the_reports(saved_run, tmp_path):
    out = tmp_path / "out"
    arguments = ["diffusion", "sample", "--run", str(saved_run), "--report", "Cardiomegaly.", "--report", "Moderate left pleural effusion.",
                 "--steps", "2", "--seed", "3"]
    assert main([*arguments, "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["0000.png", "0001.png", "reports.txt"]
    for name in ("0000.png", "0001.png"):
        with Image.open(out / name) as image:
            assert image.size == (32, 32) and image.mode == "L"
    assert (out / "reports.txt").read_text().splitlines() == ["Cardiomegaly.", "Moderate left pleural effusion."]
    again = tmp_path / "again"
    assert main([*arguments, "--out", str(again)]) == 0
    assert (again / "0000.png").read_bytes() == (out / "0000.png").read_bytes()  # a seed fixes the images


def test_sample_reads_a_reports_file_skipping_blank_lines(saved_run, tmp_path):
    reports = tmp_path / "reports.txt"
    reports.write_text("Cardiomegaly.\n\n   \nThe lungs are clear.\nMild pulmonary edema.\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["diffusion", "sample", "--run", str(saved_run), "--reports", str(reports), "--out", str(out),
                 "--steps", "1", "--guidance", "1", "--batch-size", "2"]) == 0
    assert sorted(path.name for path in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png"]


@pytest.mark.parametrize("make, flag", [
    (lambda tmp: ["--reports", str(tmp / "missing.txt")], "--reports"),
    (lambda tmp: ["--reports", str(tmp)], "--reports"),  # a folder, not a file
    (lambda tmp: ["--reports", str(tmp / "blank.txt")], "--report"),
    (lambda tmp: ["--report", " ", "--guidance", "-1"], "--guidance"),
])
def test_bad_reports_end_in_one_error_line_and_exit_code_2(saved_run, tmp_path, capsys, make, flag):
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    code = main(["diffusion", "sample", "--run", str(saved_run), *make(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert code == 2 and len(errors) == 1 and flag in errors[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_stage_verb_runs_that_stage_only(tmp_path):
    settings = ["image_size=32", "data=[{kind: phantom, num_samples: {train: 16, val: 4, test: 4}, seed: 0}]",
                "autoencoder.eval_max_images=4", "autoencoder.train.max_steps=2", "autoencoder.train.batch_size=8",
                "autoencoder.train.warmup_steps=0", "autoencoder.train.validate_every=0", "autoencoder.train.progress_bar=false",
                f"output_dir={tmp_path / 'run'}"]
    arguments = ["diffusion", "autoencoder", "--config", "diff-cxr-tiny-phantom"]
    for setting in settings:
        arguments += ["--set", setting]
    previous = torch.get_num_threads()
    try:
        assert main(arguments) == 0
    finally:
        torch.set_num_threads(previous)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary) == ["autoencoder"]
    assert (run_paths(tmp_path / "run")["autoencoder"] / "model.safetensors").is_file()
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["autoencoder", "config.yaml", "summary.json"]
