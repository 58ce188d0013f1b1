import json
from pathlib import Path

import pytest

from cxrfm.cli.main import VERB_MODULES, build_parser, main


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for module in VERB_MODULES:
        assert module.rsplit(".", 1)[1] in out


def test_every_verb_module_registers():
    # A verb module that fails to import must fail loudly, not vanish from --help.
    parser = build_parser()
    actions = next(a for a in parser._actions if a.dest == "verb")
    assert set(actions.choices) == {m.rsplit(".", 1)[1] for m in VERB_MODULES}


def test_config_error_is_reported_without_traceback(capsys, tmp_path):
    code = main(["demo", "--out", str(tmp_path / "run"), "--set", "segmenter.train.epochs=many"])
    assert code == 2
    err = capsys.readouterr().err
    assert "segmenter.train.epochs" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    overrides = [
        "gallery_count=2", "hd_size=[320, 320]", "phantom_size=[128, 128]", "eval_phantoms=4",
        "segmenter.data.num_samples={train: 16, val: 8}", "segmenter.train.epochs=1", "segmenter.train.progress=false",
        "pretrain_overrides=[train.max_steps=6, train.figure_every=3, train.checkpoint_every=3, data.sources.phantom.num_samples=24]",
        "report_overrides=[train.max_steps=4, data.num_samples.train=16, data.num_samples.val=4, data.num_samples.test=4, evaluation.meteor=false]",
        "dvae_overrides=[train.max_steps=4, train.warmup_steps=1, train.validate_every=0, 'data=[{kind: phantom, num_samples: {train: 16, val: 4, test: 4}}]']",
        "uar_overrides=['stages=[{max_steps: 3, alignment: 1.0}, {max_steps: 3, alignment: 1.0, mask: 1.0, refine: true}]', "
        "train.warmup_steps=1, data.num_samples.train=16, data.num_samples.val=4, data.num_samples.test=4, evaluation.meteor=false]",
        "diffusion_overrides=[image_size=32, 'data=[{kind: phantom, num_samples: {train: 16, val: 4, test: 6}, cache: true}]', "
        "autoencoder.train.max_steps=2, text.train.max_steps=2, text.condition_tokens=4, denoiser.train.max_steps=2, "
        "adapter.train.max_steps=2, text.train.batch_size=8, denoiser.train.batch_size=8, adapter.train.batch_size=8, autoencoder.train.batch_size=8, autoencoder.train.validate_every=0, text.train.validate_every=0, denoiser.train.validate_every=0, "
        "adapter.train.validate_every=0, sampling.num_inference_steps=2, evaluation.max_images=6, 'evaluation.guidance_sweep=[1.0, 3.0]']",
    ]
    args = ["demo", "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    for figure in ("figures/phantoms.png", "figures/phantom_hd.png", "figures/contours.png"):
        assert (out / figure).stat().st_size > 10_000
    assert summary["pretraining"]["steps"] == 6 and summary["pretraining"]["figures"]
    assert 0.0 <= summary["segmentation"]["scores"]["segmenter"]["dice_mean"] <= 1.0
    from cxrfm.models.vit import VisionTransformer

    encoder = VisionTransformer.from_pretrained(out / "pretrain" / "encoder")
    assert encoder.config.in_channels == 1
    assert (out / "figures" / "report_examples.png").stat().st_size > 10_000
    assert set(summary["report"]["test_nlg"]) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert 0.0 <= summary["classification"]["test_mean_auroc"] <= 1.0
    assert (out / "dvae" / "reconstructions.png").is_file() and 0.0 <= summary["uar"]["alignment_score"] <= 1.0
    assert (out / "uar" / "stage1" / "model").is_dir() and "BLEU-4" in summary["uar"]["test_nlg"]
    assert Path(summary["classification"]["heatmaps"]).stat().st_size > 10_000
    summary_md = (out / "summary.md").read_text()
    assert "# cxrfm demo" in summary_md and "## Disease prediction" in summary_md and "## UAR report generation" in summary_md
    diffusion = summary["diffusion"]
    assert set(diffusion["seconds"]) == {"autoencoder", "text", "denoiser", "adapter", "evaluation"}
    assert diffusion["evaluation"]["images"] == 6 and "mauc" in diffusion["evaluation"]  # scored by the classification stage's model
    assert diffusion["evaluation"]["feature_space"] == "cxrfm-vit (pretrain/encoder)"  # FD / KID in the MAE encoder's space
    assert all(Path(path).stat().st_size > 5_000 for path in diffusion["figures"].values())
    assert "## Report -> image (Diff-CXR)" in summary_md and "(not FID)" in summary_md


def test_demo_never_overwrites_an_earlier_run(tmp_path):
    from cxrfm.utils import make_run_dir

    first = make_run_dir(tmp_path, "demo")
    (first / "summary.json").write_text("{}")
    second = make_run_dir(tmp_path, "demo")
    assert second == tmp_path / "demo-1" and (first / "summary.json").exists()
