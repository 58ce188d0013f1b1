"""``cxrfm report``: train a report generator, write reports for images, score reports.

    cxrfm report train --config report-tiny-phantom [--set tokenizer.language=zh] [--resume]
    cxrfm report train --config report-iu-xray --set model.encoder_dir=runs/hd/encoder
    cxrfm report generate --model runs/report-tiny-phantom/model --input FOLDER_OR_MANIFEST --out preds.jsonl [--beam 3]
    cxrfm report evaluate --predictions preds.jsonl [--references refs.jsonl | --dataset iu-xray --root DIR --split test]
                          [--tokenizer MODEL_DIR] [--out metrics.json]

``train`` writes ``<train.output_dir>/model`` (weights, ``tokenizer.json``, ``generation.json``),
``best/``, ``metrics.jsonl`` and, with ``evaluation.test``, ``predictions_test.jsonl`` and
``metrics_test.json``.

``generate`` reads a folder of images (every image one study) or a CSV/JSONL manifest (a JSONL
``image`` list gives a study's views) and writes ``id, image, prediction`` rows (plus ``reference``
where the manifest has the model's report section) as ``.jsonl`` or ``.csv``.

``evaluate`` joins predictions and references by ``id``. References come from ``--references`` (a
``.jsonl``/``.csv`` with ``id`` and one of ``reference``/``report``/``findings``/``text``), from a
dataset split (``--dataset KIND --root DIR --split test --text findings``), or from the predictions'
own ``reference`` column. With ``--tokenizer`` (a model folder) references are cut and
vocabulary-mapped the way R2Gen scores them; without it they are only normalised. It prints and
saves BLEU-1..4, METEOR, ROUGE-L, CIDEr and clinical efficacy, and states the CE convention.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cxrfm.cli.common import add_config_arguments, positive_int

log = logging.getLogger(__name__)

REFERENCE_COLUMNS = ("reference", "report", "findings", "text")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="report generation: train (R2Gen on a cxrfm ViT), generate, evaluate (NLG + clinical efficacy)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="report_action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train with validation-based model selection, then score the test split")
    add_config_arguments(train, default_config="report-tiny-phantom")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT", help="continue from the latest (or given) checkpoint")
    train.set_defaults(func=_train)

    generate = actions.add_parser("generate", help="write a report for every study of a folder or manifest")
    generate.add_argument("--model", required=True, type=Path, help="a trained model folder (<run>/model)")
    generate.add_argument("--input", required=True, type=Path, help="folder of images, or a manifest (.csv/.jsonl or a folder holding one)")
    generate.add_argument("--out", required=True, type=Path, help="predictions file (.jsonl or .csv)")
    generate.add_argument("--beam", type=positive_int, default=None, help="beam size (default: the model's generation.json, 3)")
    generate.add_argument("--batch-size", type=positive_int, default=None)
    generate.add_argument("--split", default=None, help="only this split of a manifest")
    generate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    generate.set_defaults(func=_generate)

    evaluate = actions.add_parser("evaluate", help="score predictions against references: NLG + clinical efficacy")
    evaluate.add_argument("--predictions", required=True, type=Path, help=".jsonl or .csv with id and prediction")
    evaluate.add_argument("--references", type=Path, default=None, help=".jsonl or .csv with id and reference/report/findings/text")
    evaluate.add_argument("--dataset", default=None, help="take references from a dataset kind (iu-xray, manifest, mimic, ...)")
    evaluate.add_argument("--root", type=Path, default=None, help="the dataset's root (with --dataset)")
    evaluate.add_argument("--split", default="test", help="the dataset split (default test)")
    evaluate.add_argument("--text", default="findings", choices=("findings", "impression", "report"), help="report section of --dataset")
    evaluate.add_argument("--tokenizer", type=Path, default=None, help="model folder: score references the R2Gen way (cut, vocabulary-mapped)")
    evaluate.add_argument("--language", default="en", choices=("en", "zh"))
    evaluate.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    evaluate.add_argument("--no-clinical", action="store_true", help="skip clinical efficacy")
    evaluate.add_argument("--out", type=Path, default=None, help="write the metrics as JSON")
    evaluate.set_defaults(func=_evaluate)


# ------------------------------------------------------------------------------------ train
def _train(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.report import ReportTrainConfig, run_report_training

    if int(os.environ.get("RANK", "0")) > 0:
        logging.getLogger().setLevel(logging.WARNING)
    config = load_config(ReportTrainConfig, resolve_config_path(args.config), args.overrides)
    result = run_report_training(config, resume=args.resume)
    best = result.train.best
    log.info(
        "done: vocabulary %d, %s; model %s%s",
        result.vocab_size,
        f"best val {best['metric']} {best['value']:.4f} at step {best['step']}" if best else "final weights",
        result.model_dir,
        f"; test metrics {result.output_dir / 'metrics_test.json'}" if result.test_scores else "",
    )
    return 0


# --------------------------------------------------------------------------------- generate
def _generate(args: argparse.Namespace) -> int:
    from cxrfm.pipelines.report_generation import generate_for_input, write_predictions

    rows = generate_for_input(
        args.model, args.input, beam_size=args.beam, batch_size=args.batch_size, split=args.split, device=args.device, progress=True
    )
    path = write_predictions(rows, args.out)
    log.info("wrote %d reports to %s", len(rows), path)
    return 0


# --------------------------------------------------------------------------------- evaluate
def read_rows(path: Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.csv`` file (DatasetError naming the file and line otherwise)."""
    from cxrfm.data.tables import read_csv_rows, read_jsonl_rows
    from cxrfm.errors import DatasetError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    if path.suffix.lower() == ".csv":
        return [dict(row) for _, row in read_csv_rows(path, required=("id",))[1]]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return [dict(row) for _, row in read_jsonl_rows(path)]
    raise DatasetError(path, "use a .jsonl or .csv file")


def references_by_id(rows: list[dict], source: Path) -> dict[str, str]:
    """``{id: reference}`` from rows with ``id`` and one of :data:`REFERENCE_COLUMNS`."""
    from cxrfm.errors import DatasetError

    column = next((c for c in REFERENCE_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        raise DatasetError(source, f"no reference column (one of {', '.join(REFERENCE_COLUMNS)})")
    return {str(row["id"]): row[column] for row in rows if row.get(column)}


def dataset_references(kind: str, root: Path, split: str, text: str, language: str) -> dict[str, str]:
    """``{study id: report}`` of one dataset split, read without pixels."""
    from cxrfm.data.registry import DatasetSpec, build_dataset
    from cxrfm.recipes.report import split_texts

    dataset = build_dataset(DatasetSpec(kind=kind, root=str(root), splits={"test": split}, options={"images_required": False}), "test")
    texts = split_texts(dataset, text, language)
    ids = [str(r.meta.get("study_id") or r.image) for r in dataset.records]
    return {i: t for i, t in zip(ids, texts) if t}


def pair_reports(predictions: list[dict], references: dict[str, str], source: str) -> tuple[list[str], list[str]]:
    """Predictions and references in the same order; every prediction needs a reference."""
    from cxrfm.errors import DatasetError

    missing = [str(row.get("id")) for row in predictions if str(row.get("id")) not in references]
    if missing:
        raise DatasetError(source, f"{len(missing)} prediction id(s) have no reference, e.g. {missing[:3]}")
    return [str(row.get("prediction") or "") for row in predictions], [references[str(row["id"])] for row in predictions]


def _evaluate(args: argparse.Namespace) -> int:
    from cxrfm.models.report.tokenizer import ReportTokenizer
    from cxrfm.errors import ConfigError, DatasetError
    from cxrfm.evaluation.report import metrics_table, score_reports

    predictions = read_rows(args.predictions)
    if not predictions or "prediction" not in predictions[0]:
        raise DatasetError(args.predictions, "needs rows with 'id' and 'prediction'")
    if args.dataset is not None:
        if args.root is None:
            raise ConfigError("--root", "--dataset needs --root")
        references, source = dataset_references(args.dataset, args.root, args.split, args.text, args.language), f"{args.dataset} {args.split}"
    elif args.references is not None:
        references, source = references_by_id(read_rows(args.references), args.references), str(args.references)
    else:
        references, source = references_by_id(predictions, args.predictions), f"{args.predictions} (reference column)"
    predicted, referenced = pair_reports(predictions, references, source)
    convention = "normalised references (not cut or vocabulary-mapped)"
    if args.tokenizer is not None:
        tokenizer = ReportTokenizer.from_pretrained(args.tokenizer)
        referenced = [tokenizer.reference_text(text) for text in referenced]
        convention = f"R2Gen references: cut to {tokenizer.config.max_length} tokens, vocabulary of {args.tokenizer}"
    scores = score_reports(predicted, referenced, language=args.language, meteor=not args.no_meteor, clinical=not args.no_clinical)
    scores["references"] = {"source": source, "convention": convention}
    sys.stdout.write(metrics_table(scores) + f"\nreferences: {source}; {convention}\n")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrfm.cli.report ACTION ...``: the same as ``cxrfm report ACTION ...``."""
    from cxrfm.cli.main import run_verb
    from cxrfm.utils import configure_logging

    parser = argparse.ArgumentParser(prog="python -m cxrfm.cli.report")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
    configure_logging(logging.INFO)
    return run_verb(args)


if __name__ == "__main__":
    sys.exit(main())
