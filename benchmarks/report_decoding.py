"""Report generation speed: reports/s with and without the decoding cache.

A randomly initialised R2Gen generator of the default size (d 512, 3+3 layers, 3-slot memory,
vocabulary 763 = IU-Xray's) decodes from precomputed features of two views of a ViT (default:
ViT-L/16 at 384², i.e. 2 × 577 tokens of width 1024, the HD-MAE paper's English setting) with beam
search (width 3) up to 60 tokens. ``cached`` carries self-attention keys/values, encoder
keys/values and the relational-memory state; ``uncached`` re-decodes the whole prefix every step
(R2Gen's own scheme). Both must give identical tokens; the script checks that.

Random weights seldom choose ``<eos>``, so nearly every report runs to the full 60 tokens: the
worst case for the uncached path (real IU reports average ~36 tokens).

    python benchmarks/report_decoding.py                           # CPU, beam 3, batch 4
    python benchmarks/report_decoding.py --device cuda --batch-size 16 --beams 1 3
"""

from __future__ import annotations

import argparse
import time

import torch

from cxrfm.models.report.r2gen import ReportGenerator, report_generator_config


def measure(model, features, beam_size, max_length, use_cache, repeats) -> tuple[float, torch.Tensor]:
    """Seconds per call (best of ``repeats`` after one warm-up) and the generated ids."""
    output = model.generate(features=features, beam_size=beam_size, max_length=max_length, use_cache=use_cache)
    best = float("inf")
    for _ in range(repeats):
        if features.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = model.generate(features=features, beam_size=beam_size, max_length=max_length, use_cache=use_cache)
        if features.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, output.sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--beams", type=int, nargs="+", default=[3])
    parser.add_argument("--max-length", type=int, default=60)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--tokens-per-view", type=int, default=577, help="ViT tokens per view (577 = 1 + 24²)")
    parser.add_argument("--feature-dim", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=763)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = report_generator_config("r2gen", args.vocab_size, feature_dim=args.feature_dim)
    model = ReportGenerator(config).to(device).eval()
    features = torch.randn(args.batch_size, args.views * args.tokens_per_view, args.feature_dim, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; batch {args.batch_size}; features {tuple(features.shape)}; max length {args.max_length}; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters\n")
    print("| beam | decoding | reports/s | s/report | mean tokens | speed-up | identical tokens |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for beam in args.beams:
        cached_seconds, cached = measure(model, features, beam, args.max_length, True, args.repeats)
        uncached_seconds, uncached = measure(model, features, beam, args.max_length, False, args.repeats)
        identical = torch.equal(cached, uncached)
        length = float((cached != model.config.pad_id).sum(1).float().mean())
        for label, seconds in (("uncached", uncached_seconds), ("cached", cached_seconds)):
            speedup = f"{uncached_seconds / cached_seconds:.1f}×" if label == "cached" else "1.0×"
            print(f"| {beam} | {label} | {args.batch_size / seconds:.2f} | {seconds / args.batch_size:.3f} | "
                  f"{length:.1f} | {speedup} | {identical} |")


if __name__ == "__main__":
    main()
