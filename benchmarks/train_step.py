"""One training step at batch 128: the batched step of `itmatch train` against the SGRAF authors' per-caption
step (tests/reference_train.py), same process, same model, same batch.

A step is forward, summed hardest-negative hinge loss, backward, gradient clipping at 2.0 and an Adam update,
at the papers' sizes (2048-d regions × 36, 300-d words, 1024-d embeddings, 256-d similarity vectors, Flickr30K's
8,481-word vocabulary, dropout 0.4) on random features and captions of Flickr30K-like lengths, sorted by length
as the loader sorts them. Prints ms per step (median of ``--steps`` after one warm-up step) and the speed-up.

    python benchmarks/train_step.py                          # SGR and SAF, batch 128 (a few minutes on 2 cores)
    python benchmarks/train_step.py --models saf --steps 5 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import flickr_like_captions, peak_rss
from reference_train import reference_step

from itmatch.models import create_model
from itmatch.scoring import pad_tokens
from itmatch.train.config import load_config
from itmatch.train.loader import Batch
from itmatch.train.loop import make_optimizer, training_step
from itmatch.train.objective import TrainingObjective

CONFIGS = {"sgr": "configs/sgr_f30k.toml", "saf": "configs/saf_f30k.toml"}


def make_batch(size: int, vocab_size: int, seed: int = 0) -> Batch:
    """Random pairs sorted by caption length (longest first)."""
    captions = sorted(flickr_like_captions(size, vocab_size, seed), key=len, reverse=True)
    tokens, lengths = pad_tokens(captions)
    features = torch.rand(size, 36, 2048, generator=torch.Generator().manual_seed(seed))
    return Batch(features, tokens, lengths, torch.arange(size))


def time_steps(step, n: int) -> list[float]:
    """Seconds of ``n`` calls of ``step`` after one warm-up call."""
    step()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sgr", "saf"], choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after a warm-up)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    for name in args.models:
        config = load_config(CONFIGS[name])
        torch.manual_seed(0)
        model = create_model(name, vocab_size=8481, **config.model.args).train()
        reference = copy.deepcopy(model)
        batch = make_batch(args.batch_size, 8481)
        objective, optimizer = TrainingObjective(model, config.loss), make_optimizer(config, model)
        ref_optimizer = torch.optim.Adam(reference.parameters(), lr=config.optim.lr)
        with peak_rss() as ours_rss:
            ours = time_steps(lambda: training_step(objective, optimizer, batch, config, torch.device("cpu")),
                              args.steps)
        with peak_rss() as ref_rss:
            theirs = time_steps(lambda: reference_step(reference, ref_optimizer, batch.features, batch.tokens,
                                                       batch.lengths, config.optim.grad_clip), args.steps)
        a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
        print(f"{name}: batched {a:8.0f} ms/step (peak RSS {ours_rss['peak'] / 2**30:.1f} GiB)   "
              f"per-caption reference {b:8.0f} ms/step (peak RSS {ref_rss['peak'] / 2**30:.1f} GiB)   "
              f"speed-up {b / a:.2f}x")


if __name__ == "__main__":
    main()
