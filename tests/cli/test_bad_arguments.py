"""Every verb, run as a user would (a subprocess), with ordinary mistakes: each ends in one error
line naming the file or field and exit code 2, never a Python traceback, and writes nothing.

``{tmp}`` is an empty folder, ``{file}`` an existing text file, ``{notes}`` a text file named .png.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

TINY = ["--set", "train.max_steps=1"]
CASES = {
    # verb: [(argv, text the error line must contain), ...]
    "demo": [
        (["demo", "--config", "{tmp}/missing.yaml"], "missing.yaml"),
        (["demo", "--set", "seed=abc"], "seed"),
        (["demo", "--set", "no_such_field=1"], "no_such_field"),
        (["demo", "--out", "{file}/run"], "is a file"),
    ],
    "phantom": [
        (["phantom", "--out", "{tmp}/p", "--size", "0", "0"], "--size"),
        (["phantom", "--out", "{tmp}/p", "--count", "-2"], "--count"),
        (["phantom", "--out", "{tmp}/p", "--finding", "Effusion=2"], "--finding"),
        (["phantom", "--out", "{tmp}/p", "--finding", "Broken Heart=0.5"], "Broken Heart"),
        (["phantom", "--out", "{tmp}/p", "--val-fraction", "nan"], "--val-fraction"),
        (["phantom", "--out", "{file}", "--count", "1", "--size", "32", "32"], "is a file"),
    ],
    "segment": [
        (["segment", "train", "--config", "{notes}"], "notes.png"),
        (["segment", "train", "--set", "train.lr=0"], "lr"),
        (["segment", "train", "--set", "train.device=gpu"], "device"),
        (["segment", "train", "--set", "train.device=cuda:1"], "train.device"),
        (["segment", "train", "--set", "data.kind=openist", "--set", "data.root={tmp}/nowhere"], "nowhere"),
        (["segment", "predict", "--weights", "{tmp}/none", "--input", "{tmp}", "--out", "{tmp}/m"], "none"),
        (["segment", "predict", "--weights", "{tmp}", "--input", "{tmp}", "--out", "{tmp}/m", "--threshold", "7"], "--threshold"),
        (["segment", "evaluate", "--method", "segmenter"], "--weights"),
        (["segment", "evaluate", "--method", "classical", "--root", "{tmp}/nowhere"], "nowhere"),
    ],
    "pretrain": [
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "train.device=gpu"], "device"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "train.lr=.nan"], "lr"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "train.device=cuda", *TINY], "train.device"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "data.sources.phantom.num_samples=0"], "num_samples"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "data.sources.phantom.options={bogus: 1}", *TINY], "bogus"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "train.output_dir={file}/run"], "train.output_dir"),
        (["pretrain", "--config", "mae-tiny-phantom", "--set", "model.preset=nope"], "nope"),
        (["pretrain", "--config", "nope"], "nope"),
    ],
    "report": [
        (["report", "train", "--config", "report-tiny-phantom", "--set", "data.kind=nope"], "nope"),
        (["report", "train", "--config", "report-tiny-phantom", "--set", "train.batch_size=0"], "batch_size"),
        (["report", "generate", "--model", "{tmp}/none", "--input", "{tmp}", "--out", "{tmp}/r.jsonl"], "none"),
        (["report", "generate", "--model", "{tmp}", "--input", "{tmp}", "--out", "{tmp}/r.jsonl", "--beam", "0"], "--beam"),
        (["report", "evaluate", "--predictions", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["report", "evaluate", "--predictions", "{notes}"], "notes.png"),
        (["report", "train", "--config", "uar-tiny-phantom", "--set", "model.uar.dvae_dir=null"], "model.uar.dvae_dir"),
        (["report", "train", "--config", "uar-tiny-phantom", "--set", "model.uar.dvae_dir={tmp}/none"], "none"),
        (["report", "train", "--config", "uar-tiny-phantom", "--set", "stages=[{max_steps: 0}]"], "max_steps"),
        (["report", "train", "--config", "uar-tiny-phantom", "--set", "model.uar.margin=5"], "margin"),
    ],
    "dvae": [
        (["dvae", "train", "--config", "nope"], "nope"),
        (["dvae", "train", "--set", "model.preset=huge"], "huge"),
        (["dvae", "train", "--set", "model.overrides={codebook_size: 1}"], "codebook_size"),
        (["dvae", "train", "--set", "train_image_size=64"], "train_image_size"),
        (["dvae", "train", "--set", "data=[{kind: openist, root: {tmp}/nowhere}]"], "nowhere"),
        (["dvae", "train", "--set", "train.output_dir={file}/run"], "train.output_dir"),
    ],
    "diffusion": [
        (["diffusion", "train", "--config", "nope"], "nope"),
        (["diffusion", "train", "--set", "autoencoder.preset=huge"], "autoencoder.preset"),
        (["diffusion", "text", "--set", "denoiser.preset=uvit-huge"], "denoiser.preset"),  # refused before stage 1 trains
        (["diffusion", "train", "--set", "image_size=30"], "image_size"),
        (["diffusion", "autoencoder", "--set", "text_field=notes"], "text_field"),
        (["diffusion", "train", "--set", "output_dir={file}/run"], "file.txt/run"),
        (["diffusion", "sample", "--run", "{tmp}/none", "--report", "Cardiomegaly.", "--out", "{tmp}/o"], "none"),
        (["diffusion", "sample", "--run", "{tmp}", "--reports", "{tmp}/missing.txt", "--out", "{tmp}/o"], "--reports"),
        (["diffusion", "sample", "--run", "{tmp}", "--report", "Cardiomegaly.", "--out", "{tmp}/o", "--steps", "0"], "--steps"),
        (["diffusion", "sample", "--run", "{tmp}", "--report", "Cardiomegaly.", "--out", "{tmp}/o", "--guidance", "-1"], "--guidance"),
    ],
    "classify": [
        (["classify", "train", "--set", "labels.fraction=0"], "fraction"),
        (["classify", "train", "--set", "labels.names=[Broken Heart]", *TINY], "Broken Heart"),
        (["classify", "predict", "--model", "{tmp}/none", "--input", "{tmp}", "--out", "{tmp}/p.csv"], "none"),
        (["classify", "evaluate", "--model", "{tmp}/none", "--dataset", "phantom"], "none"),
        (["classify", "evaluate", "--model", "{tmp}", "--dataset", "phantom", "--bootstrap", "-1"], "--bootstrap"),
    ],
    "shards": [
        (["shards", "write", "--dataset", "folder", "--root", "{tmp}/nowhere", "--out", "{tmp}/s"], "nowhere"),
        (["shards", "write", "--dataset", "folder", "--root", "{tmp}", "--out", "{tmp}/s", "--size", "0", "5"], "--size"),
        (["shards", "info", "{tmp}/nowhere"], "nowhere"),
    ],
}


NEEDS_NO_GPU = ("train.device=cuda", "train.device=cuda:1")  # on a GPU machine these would train


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cxrfm.cli.main", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    filled = []
    for part in argv:
        for name, value in places.items():
            part = part.replace("{" + name + "}", value)
        filled.append(part)
    return filled


@pytest.mark.parametrize("verb", sorted(CASES))
def test_bad_arguments_end_in_one_error_line_without_a_traceback(verb, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "notes.png").write_text("a text file with an image's name\n")
    places = {"tmp": str(tmp_path), "file": str(tmp_path / "file.txt"), "notes": str(tmp_path / "notes.png")}
    import torch

    gpu = torch.cuda.is_available()
    cases = [(_fill(argv, places), expected) for argv, expected in CASES[verb] if not (gpu and set(argv) & set(NEEDS_NO_GPU))]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the interpreter start-up dominates: overlap it
        results = list(pool.map(lambda case: _run(case[0]), cases))
    for (argv, expected), result in zip(cases, results):
        shown = f"cxrfm {' '.join(argv)}\nrc {result.returncode}\nstderr:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, shown
        assert result.returncode == 2, shown
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "error:" in line]
        assert errors and expected in errors[-1], shown
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.txt", "notes.png"]  # nothing written
