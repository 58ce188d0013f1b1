"""Tiny report-training configs for the report training / CLI / IU stand-in tests."""

from __future__ import annotations

from cxrfm.config import from_dict
from cxrfm.data.phantom import PhantomDataset
from cxrfm.io import write_image
from cxrfm.recipes.report import ReportTrainConfig


def tiny_report_config(output_dir, **sections) -> ReportTrainConfig:
    """A 32x32 phantom run of a few seconds: 1-block ViT, 32-wide decoder, 24 train phantoms."""
    data = {
        "model": {
            "preset": "r2gen-tiny-cpu",
            "overrides": {"num_decoder_layers": 1, "dropout": 0.0, "visual_dropout": 0.0},
            "encoder_preset": "vit-tiny-cpu",
            "encoder_overrides": {"depth": 1, "embed_dim": 32},
            "image_size": [32, 32],
        },
        "tokenizer": {"min_frequency": 1, "max_length": 40},
        "data": {"kind": "phantom", "cache": True, "num_samples": {"train": 24, "val": 4, "test": 4}},
        "decoding": {"beam_size": 2, "batch_size": 8},
        "evaluation": {"val_metrics": ["BLEU-4"], "meteor": False},
        "encoder_lr": 1.0e-3,
        "train": {
            "output_dir": str(output_dir), "max_steps": 30, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 3,
            "log_every": 5, "validate_every": 10, "select_metric": "BLEU-4", "optimizer": "adam", "amsgrad": True,
            "weight_decay": 5.0e-5, "betas": [0.9, 0.999], "device": "cpu", "tensorboard": False, "progress_bar": False,
            "num_threads": 1,
        },
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(ReportTrainConfig, data)


def write_iu_standins(annotation: dict, image_root, studies: dict[str, int], size: int = 40) -> dict[str, list[str]]:
    """Stand-in PNGs (phantoms) for the first ``studies[split]`` IU studies of each split, in the R2Gen
    layout ``<image_root>/<id>/0.png, 1.png``: the shared set has no IU images. Returns the ids."""
    phantoms = PhantomDataset(2 * sum(studies.values()), (size, size), seed=9_000_000)
    ids, drawn = {}, 0
    for split, count in studies.items():
        ids[split] = [entry["id"] for entry in annotation[split][:count]]
        for study in ids[split]:
            (image_root / study).mkdir(parents=True)
            for view in range(2):
                write_image(image_root / study / f"{view}.png", phantoms[drawn].image[0].numpy())
                drawn += 1
    return ids
