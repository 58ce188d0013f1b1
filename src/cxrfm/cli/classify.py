"""``cxrfm classify``: disease prediction (VTB-style classifier, linear probe, fine-tuning).

    cxrfm classify train --config classify-tiny-phantom
    cxrfm classify train --config classify-covid --set data.label_fraction=0.1 --set model.encoder_weights=runs/mae/encoder
    cxrfm classify predict --model runs/classify-covid/model --input images/ --out probs.csv
    cxrfm classify evaluate --model runs/classify-covid/model --dataset covid --root ../shared/data/covid_chestxray --split test

``train`` writes ``<output_dir>/model`` (classifier + ``thresholds.json`` chosen on validation),
``metrics.md`` / ``metrics.json`` (validation and test tables with bootstrap CIs) and
``figures/heatmaps.png``. ``evaluate`` scores a split with the saved validation thresholds; it
never re-tunes anything on the split it scores.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cxrfm.cli.common import add_config_arguments, non_negative_int, positive_int

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="disease prediction: train / predict / evaluate (VTB, linear probe, fine-tuning)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train with validation-based selection and thresholds, then test once")
    add_config_arguments(train, default_config="classify-tiny-phantom")
    train.set_defaults(func=_train)

    predict = actions.add_parser("predict", help="per-label probabilities for a folder of images or a manifest")
    predict.add_argument("--model", required=True, help="a classifier folder (<run>/model)")
    predict.add_argument("--input", required=True, help="an image folder, or a manifest (.csv / .jsonl)")
    predict.add_argument("--out", required=True, help="output CSV: path, one probability column per label, positives")
    predict.add_argument("--batch-size", type=positive_int, default=32)
    predict.set_defaults(func=_predict)

    evaluate = actions.add_parser("evaluate", help="metric table with bootstrap CIs on a labelled split")
    evaluate.add_argument("--model", required=True, help="a classifier folder (<run>/model)")
    evaluate.add_argument("--dataset", required=True, help="phantom or a dataset kind (covid, chexpert, manifest, ...)")
    evaluate.add_argument("--root", help="the dataset folder (not for phantom)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="dataset option (default: the training run's, e.g. label_set=coarse)")
    evaluate.add_argument("--num-samples", type=positive_int, default=64, help="phantom only")
    evaluate.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples (0: none)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    evaluate.add_argument("--batch-size", type=positive_int, default=32)
    evaluate.add_argument("--out", help="also write the metrics as JSON here")
    evaluate.add_argument("--heatmaps", help="also write a heatmap figure of the first images here (PNG)")
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.classify import ClassifyConfig, run_classification

    config = load_config(ClassifyConfig, resolve_config_path(args.config), args.overrides)
    result = run_classification(config)
    summary = result.test_metrics or result.val_metrics
    log.info(
        "done: %d steps (kept step %s); mean AUROC %s on %s; model %s; table %s",
        result.steps, result.best_step, _format(summary["mean"]["auroc"]),
        "test" if result.test_metrics else "validation", result.model_dir, result.output_dir / "metrics.md",
    )
    return 0


def _format(entry: dict) -> str:
    value, (low, high) = entry["value"], entry["ci"]
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def _predict(args: argparse.Namespace) -> int:
    import csv

    from cxrfm.data.registry import DatasetSpec, build_dataset
    from cxrfm.errors import ConfigError
    from cxrfm.pipelines.classification import ClassificationPipeline

    pipeline = ClassificationPipeline.from_pretrained(args.model, device="cpu")
    source = Path(args.input)
    if not source.exists():
        raise ConfigError("--input", f"{source} does not exist")
    spec = DatasetSpec(kind="folder" if source.is_dir() else "manifest", root=str(source))
    dataset = build_dataset(spec, None, image_size=pipeline.image_size, field_name="--input")
    probabilities, _ = pipeline.predict_dataset(dataset, args.batch_size)
    names, thresholds = pipeline.label_names, pipeline.thresholds
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *names, "positives"])
        for record, row in zip(dataset.records, probabilities):
            positives = "|".join(name for name, p, t in zip(names, row, thresholds) if p >= t)
            writer.writerow([str(record.image), *(f"{p:.6f}" for p in row), positives])
    log.info("wrote probabilities of %d images x %d labels to %s", len(dataset), len(names), out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cxrfm.config import parse_override
    from cxrfm.data.registry import DatasetSpec, build_dataset, dataset_label_names
    from cxrfm.evaluation.classification import classification_metrics, format_metric_table
    from cxrfm.pipelines.classification import ClassificationPipeline, saved_dataset
    from cxrfm.recipes.classify import LabelSelectedDataset

    pipeline = ClassificationPipeline.from_pretrained(args.model, device="cpu")
    trained_on = saved_dataset(args.model)
    same_kind = str(trained_on.get("kind", "")).lower() == args.dataset.lower()
    options = dict(trained_on.get("options") or {}) if same_kind else {}
    for text in args.option:
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    spec = DatasetSpec(kind=args.dataset, root=args.root, options=options, num_samples={args.split: args.num_samples})
    dataset = build_dataset(spec, args.split, pipeline.image_size, field_name="--dataset")
    dataset = LabelSelectedDataset(dataset, dataset_label_names(dataset), pipeline.label_names)
    probabilities, labels = pipeline.predict_dataset(dataset, args.batch_size)
    summary = classification_metrics(
        probabilities, labels, pipeline.thresholds, pipeline.label_names, num_resamples=args.bootstrap, seed=args.seed
    )
    title = f"{args.dataset} {args.split}: {len(labels)} images, thresholds from validation"
    print(f"## {title}\n\n{format_metric_table(summary)}")  # noqa: T201 - the table is the verb's output
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"title": title, **summary.to_dict()}, indent=2) + "\n", encoding="utf-8")
    if args.heatmaps:
        pipeline.save_heatmaps(dataset, Path(args.heatmaps), 4)
    return 0
