"""One training step at batch 128: the batched step of `itmatch train` against the SGRAF authors' per-caption
step as their train.py runs it (tests/reference_train.py), same process, same model, same batch.

A step is forward, summed hardest-negative hinge loss, backward, gradient clipping at 2.0 and an Adam update,
at the papers' sizes (2048-d regions × 36, 300-d words, 1024-d embeddings, 256-d similarity vectors, Flickr30K's
8,481-word vocabulary, dropout 0.4) on random features and captions of Flickr30K-like lengths, sorted by length
as the loader sorts them. Prints ms per step (median of ``--steps``, the two alternating, after one warm-up
step each) and the speed-up. On a shared machine set ``OMP_NUM_THREADS`` to the cores you have to yourself.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py        # SGR and SAF, batch 128 (~6 min on one core)
    python benchmarks/train_step.py --models saf --steps 5 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from common import flickr_like_captions, peak_rss
from reference_train import reference_step

from itmatch.models import create_model
from itmatch.scoring import pad_tokens
from itmatch.train.config import load_config
from itmatch.train.loader import Batch
from itmatch.train.loop import make_optimizer, training_step
from itmatch.train.objective import TrainingObjective

CONFIGS = {name: Path(__file__).resolve().parents[1] / "configs" / f"{name}_f30k.toml" for name in ("sgr", "saf")}
TARGET = 2.0  # speed-up over the authors' step (issue 18)


def make_batch(size: int, vocab_size: int, seed: int = 0) -> Batch:
    """Random pairs sorted by caption length (longest first)."""
    captions = sorted(flickr_like_captions(size, vocab_size, seed), key=len, reverse=True)
    tokens, lengths = pad_tokens(captions)
    features = torch.rand(size, 36, 2048, generator=torch.Generator().manual_seed(seed))
    return Batch(features, tokens, lengths, torch.arange(size))


def time_alternating(steps: dict, n: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds of ``n`` calls of each step function, alternating between them (after one
    warm-up call each), so that load from other processes hits both alike; at one thread the CPU seconds are the
    steadier figure on a shared machine (waiting for a core does not count)."""
    for step in steps.values():
        step()
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sgr", "saf"], choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after a warm-up)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    for name in args.models:
        compare(name, args.batch_size, args.steps)


def compare(name: str, batch_size: int, steps: int) -> None:
    """Time the batched and the per-caption step of model ``name`` (same initial weights, same batch)."""
    config = load_config(CONFIGS[name])
    torch.manual_seed(0)
    model = create_model(name, vocab_size=8481, **config.model.args).train()
    reference = copy.deepcopy(model)
    batch = make_batch(batch_size, 8481)
    objective, optimizer = TrainingObjective(model, config.loss), make_optimizer(config, model)
    ref_optimizer = torch.optim.Adam(reference.parameters(), lr=config.optim.lr)
    with peak_rss() as rss:
        times, cpu = time_alternating({
            "batched": lambda: training_step(objective, optimizer, batch, config, torch.device("cpu")),
            "reference": lambda: reference_step(reference, ref_optimizer, batch.features, batch.tokens,
                                                batch.lengths, config.optim.grad_clip)}, steps)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("batched", "reference"))
    a_cpu, b_cpu = (statistics.median(cpu[k]) for k in ("batched", "reference"))
    print(f"{name}: batched {a:7.0f} ms/step, per-caption reference {b:7.0f} ms/step, speed-up {b / a:.2f}x "
          f"(target >= {TARGET}x); CPU {a_cpu:.1f} s vs {b_cpu:.1f} s, {b_cpu / a_cpu:.2f}x "
          f"(each step: {', '.join(f'{t:.1f}' for t in times['batched'])} s vs "
          f"{', '.join(f'{t:.1f}' for t in times['reference'])} s; peak RSS {rss['peak'] / 2**30:.1f} GiB)")

if __name__ == "__main__":
    main()
