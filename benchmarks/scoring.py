"""Exhaustive scoring: the tiled engine against the literal caption-by-caption reference, same process.

Synthetic Flickr30K-test-size data (1,000 images × 5,000 captions, 36 × 2048 regions) and random weights at
the papers' sizes. The engine scores every pair; the reference (the authors' algorithm for SGR/SAF, the
paper's equations for TSHSR, caption by caption, shards of 100 images as their evaluation runs) is timed on
the first ``--ref-captions`` captions and extrapolated per caption. Prints seconds, the ratio, max |difference|
on the shared captions, peak RSS, and the FLOP-based floor (engine FLOPs / measured matmul FLOP/s); with SGR
among the models, each other model's engine time per pair relative to SGR's.

    python benchmarks/scoring.py                      # full size, SGR and SAF (about 30 min on 2 cores)
    python benchmarks/scoring.py --captions 500       # a quicker look
    python benchmarks/scoring.py --images 200 --captions 200 --ref-captions 50 --models sgr tshsr

``--embeddings`` instead compares the embedding models (VSE, HREM at inference; random weights, Bi-GRU text) with
SGR's exhaustive engine on Flickr30K-test-size (1,000 × 5,000) and MS-COCO-5K-size (5,000 × 25,000) splits:
the seconds to encode the images and captions, to score every pair by one matrix product of the embeddings,
and SGR's engine seconds on the same data (timed on ``--sgr-captions`` captions against all images and
extrapolated per caption; SGR's time grows with images × captions, the embedding models' scoring too but
1,000s of times cheaper, their encoding only with images + captions).

    python benchmarks/scoring.py --embeddings                       # both sizes (about 15 min on 2 cores)
    python benchmarks/scoring.py --embeddings --sizes f30k --sgr-captions 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import flickr_like_captions, matmul_flops, peak_rss
import reference_sgraf
import reference_tshsr

from itmatch.evaluate import EMBEDDING_CAPTION_CHUNK
from itmatch.models import create_model
from itmatch.scoring import encode_images, encode_texts, score_matrix

#: (images, captions) of the splits the embedding comparison scores.
SPLIT_SIZES = {"f30k": (1000, 5000), "coco5k": (5000, 25000)}


def engine_flops(model_name: str, lengths: np.ndarray, n_images: int, regions: int = 36, d: int = 1024,
                 k: int = 256, steps: int = 3) -> float:
    """Multiply-add FLOPs of the engine's pair work (attention, projections, reasoning) over all pairs."""
    nodes = lengths + 1
    per_caption = 4 * regions * lengths * d + 2 * lengths * d * k + 2 * d * k
    if model_name == "sgr":
        per_caption += (steps - 1) * (2 * nodes * k * 2 * k + 4 * nodes**2 * k) + 2 * k * k + 4 * nodes * k
    return float(per_caption.sum()) * n_images


def tshsr_flops(config, lengths: np.ndarray, n_images: int) -> float:
    """Multiply-add FLOPs of TSHSR's pair work (``config`` a ``TSHSRConfig``) over all pairs."""
    d, k, regions, layers = config.embed_size, config.sim_dim, config.num_regions, config.hsr_layers
    reach = 2 if config.hsr_conv else 1

    def reasoning(nodes: np.ndarray) -> np.ndarray:
        """M - 1 full layers, then the last layer's rows that the global node's output reads."""
        if not layers:
            return np.zeros_like(nodes)
        full = (layers - 1) * (2 * nodes * k * 2 * k + 4 * nodes**2 * k)
        return full + 2 * reach * k * k + 2 * reach * nodes * k + 2 * nodes * k + 2 * k * k

    per_caption = np.full_like(lengths, 2 * d * k + 2 * k)
    if config.uses_i2t:
        per_caption = per_caption + 4 * regions * lengths * d + 2 * lengths * d * k + reasoning(lengths + 1)
    if config.uses_t2i:
        per_caption = per_caption + 4 * regions * lengths * d + 2 * regions * d * k
        if config.t2i_hsr:
            per_caption = per_caption + reasoning(np.full_like(lengths, regions + 1))
    return float(per_caption.sum()) * n_images


def run(model_name: str, feats: np.ndarray, captions: list[list[int]], ref_captions: int, flops: float) -> float:
    """Benchmark one model; returns the engine's seconds."""
    torch.manual_seed(0)
    model = create_model(model_name, vocab_size=10000).eval()
    tshsr = model_name.startswith("tshsr")
    reference_scores = (reference_tshsr if tshsr else reference_sgraf).reference_scores
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
    lengths = np.array([len(c) for c in captions])
    work = tshsr_flops(model.config, lengths, len(feats)) if tshsr else engine_flops(model_name, lengths, len(feats))
    print(f"{model_name.upper()}: engine {engine_s:.1f} s | reference {ref_s:.1f} s (timed on {len(subset)} "
          f"captions, extrapolated to {len(captions)}) | ratio {ref_s / engine_s:.2f}x | max|diff| {diff:.1e} | "
          f"peak RSS engine {mem_engine['peak'] / 2**30:.2f} GiB, reference {mem_ref['peak'] / 2**30:.2f} GiB | "
          f"engine {work / 1e12:.1f} TFLOP -> floor {work / flops:.0f} s at {flops / 1e9:.0f} GFLOP/s "
          f"({work / flops / engine_s:.0%} of peak)")
    return engine_s


def run_embeddings(size: str, sgr_captions: int, flops: float) -> None:
    """VSE and HREM (encode + score by embeddings) against SGR's exhaustive engine on one split size."""
    n_images, n_captions = SPLIT_SIZES[size]
    feats = np.random.default_rng(0).random((n_images, 36, 2048), dtype=np.float32)
    captions = flickr_like_captions(n_captions, 10000)
    device = torch.device("cpu")
    seconds = {}
    for name in ("vse", "hrem"):
        torch.manual_seed(0)
        model = create_model(name, vocab_size=10000).eval()
        with torch.inference_mode():
            start = time.perf_counter()
            images = encode_images(model, feats, device)
            encode_i = time.perf_counter() - start
            start = time.perf_counter()
            chunks = encode_texts(model, captions, device, EMBEDDING_CAPTION_CHUNK)
            encode_t = time.perf_counter() - start
            texts = torch.cat([chunk.emb for _, chunk in chunks])
            start = time.perf_counter()
            scores = images.emb @ texts.T
            matmul = time.perf_counter() - start
        seconds[name] = encode_i + encode_t + matmul
        print(f"{size} {n_images} x {n_captions} {name.upper()}: encode images {encode_i:.1f} s + captions "
              f"{encode_t:.1f} s, score by embeddings {matmul:.2f} s ({tuple(scores.shape)} in one matrix product, "
              f"{2 * scores.numel() * texts.shape[1] / flops:.2f} s at the measured matmul rate) = "
              f"{seconds[name]:.1f} s")
    torch.manual_seed(0)
    sgr = create_model("sgr", vocab_size=10000).eval()
    subset = captions[:sgr_captions]
    start = time.perf_counter()
    score_matrix(sgr, feats, subset)
    sgr_s = (time.perf_counter() - start) * n_captions / len(subset)
    print(f"{size} {n_images} x {n_captions} SGR exhaustive: {sgr_s:.0f} s (engine timed on {len(subset)} captions "
          f"x {n_images} images, extrapolated) = {sgr_s / seconds['hrem']:.0f}x HREM's and "
          f"{sgr_s / seconds['vse']:.0f}x VSE's encode-and-score time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--ref-captions", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=["sgr", "saf"],
                        choices=["sgr", "saf", "tshsr", "tshsr_i2t", "tshsr_t2i"])
    parser.add_argument("--embeddings", action="store_true",
                        help="compare VSE and HREM (scoring by embeddings) with SGR's exhaustive engine instead")
    parser.add_argument("--sizes", nargs="+", default=list(SPLIT_SIZES), choices=list(SPLIT_SIZES))
    parser.add_argument("--sgr-captions", type=int, default=200)
    args = parser.parse_args()
    if args.embeddings:
        flops = matmul_flops()
        print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, matmul {flops / 1e9:.0f} GFLOP/s")
        for size in args.sizes:
            run_embeddings(size, args.sgr_captions, flops)
        return
    rng = np.random.default_rng(0)
    feats = rng.random((args.images, 36, 2048), dtype=np.float32)
    captions = flickr_like_captions(args.captions, 10000)
    flops = matmul_flops()
    print(f"{args.images} images x {args.captions} captions, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    seconds = {name: run(name, feats, captions, min(args.ref_captions, args.captions), flops) for name in args.models}
    if "sgr" in seconds:
        pairs = args.images * args.captions
        for name, s in seconds.items():
            if name != "sgr":
                print(f"{name.upper()} vs SGR: engine {1e6 * s / pairs:.1f} vs {1e6 * seconds['sgr'] / pairs:.1f} "
                      f"µs per pair = {s / seconds['sgr']:.2f}x SGR's cost")


if __name__ == "__main__":
    main()
