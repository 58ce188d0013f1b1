"""Agreement of the offline CheXpert-style labeler with IU-Xray's MeSH labels, per observation.

Each Open-i report (findings + impression by default) is labelled by
``cxrfm.evaluation.chexpert_labeler.label_report`` and compared with labels derived from its
manually assigned ``mesh_major`` terms (``labels_from_mesh``; the mapping is documented there).
Reports indexed "No Indexing" or without terms are left out. Comparison is positive vs not:
labeler ``1`` against MeSH ``1`` (labeler uncertain, negative and blank count as not positive;
MeSH "borderline" terms count as not positive). Prints a markdown table with support counts,
precision, recall, F1 and Cohen's kappa, treating MeSH as the reference.

    python benchmarks/labeler_agreement.py                       # ../shared/data/iu_xray
    python benchmarks/labeler_agreement.py --text findings --data /path/to/iu_xray
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cxrfm.evaluation.chexpert_labeler import CHEXPERT_OBSERVATIONS, label_reports, labels_from_mesh
from cxrfm.evaluation.clinical import cohen_kappa

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_reports(data_dir: Path, text: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Report texts, MeSH label array ``(N, 14)`` and uids of the indexed reports."""
    texts, mesh, uids = [], [], []
    with open(data_dir / "manifest.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            terms = [t for t in row.get("mesh_major") or [] if t.strip() and t != "No Indexing"]
            if not terms:
                continue
            parts = {"findings": [row.get("findings")], "impression": [row.get("impression")],
                     "both": [row.get("findings"), row.get("impression")]}[text]
            body = " ".join(p.strip() for p in parts if p and p.strip())
            if not body:
                continue
            labels = labels_from_mesh(terms)
            texts.append(body)
            mesh.append([labels[name] for name in CHEXPERT_OBSERVATIONS])
            uids.append(row["uid"])
    return texts, np.array(mesh, dtype=np.float64), uids


def agreement_table(predicted: np.ndarray, reference: np.ndarray) -> list[dict]:
    rows = []
    for i, name in enumerate(CHEXPERT_OBSERVATIONS):
        p, r = predicted[:, i] == 1, reference[:, i] == 1
        tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(dict(
            observation=name, mesh_positive=int(r.sum()), labeler_positive=int(p.sum()),
            labeler_uncertain=int((predicted[:, i] == -1).sum()), labeler_negative=int((predicted[:, i] == 0).sum()),
            precision=precision, recall=recall, f1=f1, kappa=cohen_kappa(p, r),
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "iu_xray")
    parser.add_argument("--text", choices=("both", "findings", "impression"), default="both")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    texts, mesh, _ = load_reports(args.data, args.text)
    start = time.perf_counter()
    predicted = label_reports(texts)
    seconds = time.perf_counter() - start
    rows = agreement_table(predicted, mesh)

    print(f"{len(texts)} MeSH-indexed IU-Xray reports ({args.text}); labelled in {seconds:.1f} s "
          f"({len(texts) / seconds:.0f} reports/s)\n")
    print("| observation | MeSH + | labeler + | labeler ? | labeler − | precision | recall | F1 | kappa |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['observation']} | {row['mesh_positive']} | {row['labeler_positive']} | "
              f"{row['labeler_uncertain']} | {row['labeler_negative']} | {row['precision']:.3f} | "
              f"{row['recall']:.3f} | {row['f1']:.3f} | {row['kappa']:.3f} |")
    p, r = predicted == 1, mesh == 1
    tp, fp, fn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum()
    print(f"\nmicro (all 14): precision {tp / (tp + fp):.3f}, recall {tp / (tp + fn):.3f}, "
          f"F1 {2 * tp / (2 * tp + fp + fn):.3f}; macro F1 {np.mean([row['f1'] for row in rows]):.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
