"""Exhaustive scoring: the tiled engine against the literal caption-by-caption reference, same process.

Synthetic Flickr30K-test-size data (1,000 images × 5,000 captions, 36 × 2048 regions) and random weights at
the papers' sizes. The engine scores every pair; the reference (the authors' algorithm, shards of 100
images as their evaluation runs) is timed on the first ``--ref-captions`` captions and extrapolated per
caption. Prints seconds, the ratio, max |difference| on the shared captions, peak RSS, and the FLOP-based
floor (engine FLOPs / measured matmul FLOP/s).

    python benchmarks/scoring.py                      # full size, SGR and SAF (about 30 min on 2 cores)
    python benchmarks/scoring.py --captions 500       # a quicker look
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import flickr_like_captions, matmul_flops, peak_rss
from reference_sgraf import reference_scores

from itmatch.models import create_model
from itmatch.scoring import score_matrix


def engine_flops(model_name: str, lengths: np.ndarray, n_images: int, regions: int = 36, d: int = 1024,
                 k: int = 256, steps: int = 3) -> float:
    """Multiply-add FLOPs of the engine's pair work (attention, projections, reasoning) over all pairs."""
    nodes = lengths + 1
    per_caption = 4 * regions * lengths * d + 2 * lengths * d * k + 2 * d * k
    if model_name == "sgr":
        per_caption += (steps - 1) * (2 * nodes * k * 2 * k + 4 * nodes**2 * k) + 2 * k * k + 4 * nodes * k
    return float(per_caption.sum()) * n_images


def run(model_name: str, feats: np.ndarray, captions: list[list[int]], ref_captions: int, flops: float) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, vocab_size=10000).eval()
    with peak_rss() as mem_engine:
        start = time.perf_counter()
        scores = score_matrix(model, feats, captions, progress=True)
        engine_s = time.perf_counter() - start
    subset = captions[:ref_captions]
    with peak_rss() as mem_ref:
        start = time.perf_counter()
        ref = np.concatenate([reference_scores(model, torch.from_numpy(feats[i:i + 100]), subset).numpy()
                              for i in range(0, len(feats), 100)])
        ref_s = (time.perf_counter() - start) * len(captions) / len(subset)
    diff = float(np.abs(ref - scores[:, :ref_captions]).max())
    work = engine_flops(model_name, np.array([len(c) for c in captions]), len(feats))
    print(f"{model_name.upper()}: engine {engine_s:.1f} s | reference {ref_s:.1f} s (timed on {len(subset)} "
          f"captions, extrapolated to {len(captions)}) | ratio {ref_s / engine_s:.2f}x | max|diff| {diff:.1e} | "
          f"peak RSS engine {mem_engine['peak'] / 2**30:.2f} GiB, reference {mem_ref['peak'] / 2**30:.2f} GiB | "
          f"engine {work / 1e12:.1f} TFLOP -> floor {work / flops:.0f} s at {flops / 1e9:.0f} GFLOP/s "
          f"({work / flops / engine_s:.0%} of peak)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--ref-captions", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=["sgr", "saf"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    feats = rng.random((args.images, 36, 2048), dtype=np.float32)
    captions = flickr_like_captions(args.captions, 10000)
    flops = matmul_flops()
    print(f"{args.images} images x {args.captions} captions, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for name in args.models:
        run(name, feats, captions, min(args.ref_captions, args.captions), flops)


if __name__ == "__main__":
    main()
