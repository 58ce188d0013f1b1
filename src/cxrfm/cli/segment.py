"""``cxrfm segment train|predict|evaluate``: the lung segmenter from the command line.

- ``train --config segmenter-openist [--set key=value ...]``: train, keep the best weights by val Dice.
- ``predict --weights DIR --input FOLDER_OR_MANIFEST --out DIR [--overlays]``: one mask PNG per image.
- ``evaluate --weights DIR --dataset openist|covid --root DIR --split test``: Dice / IoU table.
"""

from __future__ import annotations

import argparse
import logging

from cxrfm.cli.common import add_config_arguments, fraction, non_negative_int

log = logging.getLogger(__name__)

DEFAULT_ROOTS = {"openist": "../shared/data/lung_seg_openist", "covid": "../shared/data/covid_chestxray"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="train / run / evaluate the lung segmenter")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a lung segmenter (default config: tiny, on phantoms)")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir/run_name from its latest checkpoint")
    train.set_defaults(func=_train)

    predict = actions.add_parser("predict", help="write lung-mask PNGs for a folder of images or a manifest")
    predict.add_argument("--weights", required=True, help="folder with config.json + model.safetensors")
    predict.add_argument("--input", required=True, help="image folder, or a manifest CSV with an 'image' column")
    predict.add_argument("--out", required=True, help="output folder (mask PNGs, 255 = lung)")
    predict.add_argument("--threshold", type=fraction, default=0.5)
    predict.add_argument("--keep-largest", type=non_negative_int, default=2, help="connected components to keep (0 = all)")
    predict.add_argument("--overlays", action="store_true", help="also write contour overlay figures")
    predict.add_argument("--device", default="cpu")
    predict.set_defaults(func=_predict)

    evaluate = actions.add_parser("evaluate", help="Dice / IoU of a segmenter (or the classical fallback)")
    evaluate.add_argument("--weights", help="segmenter folder; omit with --method classical")
    evaluate.add_argument("--method", choices=("segmenter", "classical"), default="segmenter")
    evaluate.add_argument("--dataset", choices=("openist", "covid"), default="openist")
    evaluate.add_argument("--root", help="dataset folder (default ../shared/data/<dataset folder>)")
    evaluate.add_argument("--split", default="test", help="split name, or 'all'")
    evaluate.add_argument("--json", help="also write the per-image scores and summaries here")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from cxrfm.config import load_config
    from cxrfm.configs import resolve_config_path
    from cxrfm.recipes.segmenter import SegmenterTrainConfig, train_segmenter

    path = resolve_config_path(args.config) if args.config else None
    config = load_config(SegmenterTrainConfig, path, args.overrides)
    run_dir = train_segmenter(config, resume=args.resume)
    log.info("segmenter weights: %s", run_dir)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from cxrfm.pipelines.lung_masks import predict_folder

    written = predict_folder(
        args.weights,
        args.input,
        args.out,
        threshold=args.threshold,
        keep_largest=args.keep_largest,
        overlays=args.overlays,
        device=args.device,
    )
    log.info("wrote %d masks to %s", written, args.out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cxrfm.anatomy.evaluate import evaluate_on_dataset

    if args.method == "segmenter" and not args.weights:
        from cxrfm.errors import ConfigError

        raise ConfigError("--weights", "required with --method segmenter")
    root = args.root or DEFAULT_ROOTS[args.dataset]
    table = evaluate_on_dataset(
        args.dataset, root, args.split, weights=args.weights, method=args.method, device=args.device, json_path=args.json
    )
    print(table)
    return 0
