"""GPU readiness: exactness, mixed precision and speed of the engine and the training step on CUDA.

On a CUDA machine, at the papers' sizes (36 × 2048 regions, d 1024, sim 256, Flickr30K-like captions, random
weights), for SGR, SAF and TSHSR:

1. fp32 on the GPU = the CPU engine: max |difference| of the scores ≤ 1e-5 (TF32 off);
2. tf32 and bf16 (autocast): max |difference| of the scores from fp32 ≤ 5e-3 (tf32) / 3e-2 (bf16);
3. pairs/s of the engine in each precision (``--images`` × ``--captions``, after a warm-up);
4. the ranking of a trained model: each model trained on the device for ``--ranking-epochs`` (1: a ranking not yet
   saturated, which precision could still change) on planted synthetic data (400 images; ``make demo``'s sizes:
   256-d features, embeddings 128, similarity 64; the training tests' learning rate and loss), then the rsum of its
   test split (``--ranking-images`` × 5 captions; 1,000: Flickr30K's test size) in tf32 and bf16 within 1.0 / 3.0
   points of fp32's at 1,000 images. One image moves each image-to-text recall by 100 / n points, so on n test
   images the tolerance is scaled by 1,000 / n (the CPU rehearsal's 100 images: 10 / 30 points, which still
   catches a broken precision path). With random weights every score lies within ~5e-3 of every other, so
   precision noise reorders near-ties and an rsum says nothing; the check is skipped (not failed) when the fp32
   rsum stays below twice chance, i.e. the short run did not learn;
5. SGR, SAF: one training loss and its gradients at batch 32 on the GPU = the CPU's (relative difference ≤ 1e-4;
   fp32, dropout off), then one training step at batch 128 (forward, loss, backward, clipping, Adam): ms/step;
6. with 2 or more GPUs: DDP over 2 GPUs with NCCL (SGR, batch 128 split over the ranks): ms/step, and the
   parameters of both ranks equal after the steps.

Prints one line per check with PASS/FAIL; exits 1 if any check fails, 0 when all pass, and 0 with a message
when no CUDA device is present (nothing to check on this machine).

``--device cpu`` is a rehearsal: every check runs with the CPU in the GPU's place (tf32 is plain fp32 there, DDP
runs two CPU processes over gloo), so that the script is known to run before a GPU's few minutes are spent on it.
Its bf16 line is a real measurement (autocast on the CPU); the others compare the CPU with itself.

    python benchmarks/gpu.py                       # all checks
    python benchmarks/gpu.py --models sgr --images 200 --captions 1000
    python benchmarks/gpu.py --device cpu --images 4 --captions 20 --steps 1 --batch-size 8 --ranking-images 100
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from common import flickr_like_captions
from train_step import CONFIGS as TRAIN_CONFIGS
from train_step import make_batch

from itmatch.data import load_split, write_synthetic
from itmatch.evaluate import evaluate_split
from itmatch.models import create_model
from itmatch.scoring import precision_context, score_matrix
from itmatch.train import load_config, train

#: precision -> (max |score difference| from fp32, max |rsum difference| from fp32 on 1,000 test images)
TOLERANCES = {"tf32": (5e-3, 1.0), "bf16": (3e-2, 3.0)}
EXACT = 1e-5
#: Largest relative difference (L2) of the loss and of each parameter's gradient between GPU and CPU, fp32.
GRADIENT_TOLERANCE = 1e-4
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: The ranking check's short run: `make demo`'s sizes on planted data, with the training tests' learning rate and
#: loss (from scratch the hardest-negative loss first collapses to equal scores for longer than a short run).
RANKING_DIM = 256
RANKING_TRAIN = {"train": 400, "dev": 50}
RANKING_RECIPE = ("model.args.embed_size=128", "model.args.sim_dim=64", "model.args.word_dim=50",
                  f"model.args.img_dim={RANKING_DIM}", "data.dev_subset=false", "data.batch_size=32",
                  "optim.lr=4e-3", "loss.hardest_negative=false")


def report(name: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def guarded(name: str, failures: list[str], check: Callable[..., None], *args: Any) -> None:
    """``check(*args)``; an exception fails check ``name`` (its traceback printed) and the script goes on, so that
    one broken check does not cost a GPU run the other checks' figures."""
    try:
        check(*args)
    except Exception as exc:  # noqa: BLE001 -- reported as this check's failure
        traceback.print_exc()
        report(name, False, f"raised {type(exc).__name__}: {exc}", failures)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a CPU has none), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_scoring(name: str, feats: np.ndarray, captions: list[list[int]], cpu_images: int, device: torch.device,
                  failures: list[str]) -> None:
    """Exactness against the CPU, mixed-precision tolerances and pairs/s of one model."""
    torch.manual_seed(0)
    model = create_model(name, vocab_size=10000).eval()
    cpu = score_matrix(model, feats[:cpu_images], captions, device="cpu")
    model.to(device)
    reference = None
    for precision in ("fp32", "tf32", "bf16"):
        score_matrix(model, feats[:8], captions[:16], device=device, precision=precision)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        scores = score_matrix(model, feats, captions, device=device, precision=precision)
        seconds = time.perf_counter() - start
        rate = f"{scores.size / seconds:,.0f} pairs/s ({seconds:.1f} s)"
        if precision == "fp32":
            reference = scores
            diff = float(np.abs(scores[:cpu_images] - cpu).max())
            report(f"{name} fp32 {device.type} = CPU", diff <= EXACT, f"max|diff| {diff:.1e} (<= {EXACT:.0e}); {rate}",
                   failures)
            continue
        limit = TOLERANCES[precision][0]
        diff = float(np.abs(scores - reference).max())
        report(f"{name} {precision}", diff <= limit, f"max|diff| from fp32 {diff:.1e} (<= {limit:.0e}); {rate}",
               failures)


def check_ranking(name: str, data: Path, work: Path, epochs: int, device: torch.device, failures: list[str]) -> None:
    """A briefly trained model's test rsum in tf32 and bf16 against fp32's (see the module's docstring)."""
    config = load_config(CONFIG_DIR / f"{name}_f30k.toml", [*RANKING_RECIPE, f"schedule.epochs={epochs}"])
    run = work / name
    train(config, data=data, vocab=data / "vocab.json", out=run, device=device.type, progress=False)
    rsums = {precision: evaluate_split(data, "test", checkpoints=[run / "best.pt"], device=device.type,
                                       precision=precision)["rsum"]
             for precision in ("fp32", "tf32", "bf16")}
    n_test = load_split(data, "test").n_images
    chance = chance_rsum(n_test, 5)
    limits = {p: TOLERANCES[p][1] * 1000 / n_test for p in ("tf32", "bf16")}
    shown = ", ".join(f"{precision} {value:.1f}" for precision, value in rsums.items())
    if rsums["fp32"] < 2 * chance:
        print(f"SKIP {name} ranking: the short run did not learn (fp32 rsum {rsums['fp32']:.1f}, chance "
              f"{chance:.1f}), so its rsum cannot show precision effects; {shown}", flush=True)
        return
    ok = all(abs(rsums[p] - rsums["fp32"]) <= limits[p] for p in limits)
    report(f"{name} ranking", ok, f"{n_test} test images after {epochs} epoch(s) on planted data: rsum {shown} (tf32 "
           f"within {limits['tf32']:.1f}, bf16 within {limits['bf16']:.1f} of fp32; chance {chance:.1f})", failures)


def chance_rsum(n_images: int, per_image: int) -> float:
    """Expected rsum (R@1, 5, 10 both ways, in %) of random scores: a caption's one image among ``n_images``; an
    image's ``per_image`` captions among all, a hit when any of them is in the top K."""
    n_captions = n_images * per_image
    t2i = sum(k / n_images for k in (1, 5, 10))
    i2t = sum(1 - math.comb(n_captions - per_image, k) / math.comb(n_captions, k) for k in (1, 5, 10))
    return 100 * (t2i + i2t)


def make_training(name: str, batch_size: int, device: torch.device, seed: int = 0):
    """(objective, optimizer, batch, config) of a batch-``batch_size`` training step of ``name`` on ``device``."""
    from itmatch.train.config import load_config
    from itmatch.train.loop import make_optimizer
    from itmatch.train.objective import TrainingObjective

    config = load_config(TRAIN_CONFIGS[name])
    torch.manual_seed(seed)
    model = create_model(name, vocab_size=8481, **config.model.args).to(device).train()
    return TrainingObjective(model, config.loss), make_optimizer(config, model), make_batch(batch_size, 8481), config


def check_training(name: str, steps: int, batch_size: int, device: torch.device, failures: list[str]) -> None:
    """ms per training step on one device (batch 128: the papers')."""
    from itmatch.train.loop import training_step

    objective, optimizer, batch, config = make_training(name, batch_size, device)
    times = []
    for _ in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        logs = training_step(objective, optimizer, batch, config, device)
        synchronize(device)
        times.append(time.perf_counter() - start)
    loss = float(next(iter(logs.values())))
    report(f"{name} training step", bool(np.isfinite(loss)),
           f"batch {batch_size}: {1e3 * min(times[1:]):.0f} ms/step (first step {1e3 * times[0]:.0f} ms), "
           f"loss {loss:.3f}", failures)


def check_gradients(name: str, failures: list[str], batch_size: int, devices: tuple[str, str]) -> None:
    """One training loss and its gradients on ``devices[1]`` (the GPU) equal those on ``devices[0]`` (the CPU)
    (fp32, TF32 off, dropout off, the same initial weights and batch): the hand-written backward passes
    (``GraphStep``, ``ProjectedSquares``) run on CUDA as on the CPU, and the CPU's GRU recurrence
    (``recurrent.py``) agrees with cuDNN's GRU."""
    losses, grads = [], []
    for device in map(torch.device, devices):
        objective, _, batch, _ = make_training(name, batch_size, device)
        for module in objective.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        with precision_context("fp32", device):
            loss, _ = objective(batch.features.to(device), batch.tokens.to(device), batch.lengths,
                                batch.images.to(device), 0, 0)
            loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.detach().cpu() for n, p in objective.model.named_parameters() if p.grad is not None})
    reference, other = grads
    errors = {n: float((other[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in reference.items()}
    worst = max(errors, key=errors.get)
    loss_error = abs(losses[1] - losses[0]) / abs(losses[0])
    ok = set(reference) == set(other) and loss_error <= GRADIENT_TOLERANCE and errors[worst] <= GRADIENT_TOLERANCE
    report(f"{name} training gradients {devices[1]} = {devices[0]}", ok,
           f"batch {batch_size}: loss {losses[0]:.5f} vs {losses[1]:.5f}, {len(errors)} gradients, largest relative "
           f"difference {errors[worst]:.1e} ({worst}) (<= {GRADIENT_TOLERANCE:.0e})", failures)


def _ddp_worker(rank: int, steps: int, port: int, queue, device_type: str, batch_size: int) -> None:
    """One rank of the DDP check: SGR, the global batch split over 2 ranks (NCCL on GPUs, gloo on the CPU)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=2)
    if cuda:
        torch.cuda.set_device(rank)
    else:  # two processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // 2))
    device = torch.device(device_type, rank if cuda else None)
    objective, optimizer, batch, config = make_training("sgr", batch_size, device)
    objective = DistributedDataParallel(objective, device_ids=[rank] if cuda else None)
    local = batch_size // 2
    half = slice(local * rank, local * (rank + 1))
    features, tokens, lengths = batch.features[half].to(device), batch.tokens[half].to(device), batch.lengths[half]
    images = torch.arange(local, device=device)
    times = []
    for _ in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        loss, _ = objective(features, tokens, lengths, images, 0, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), config.optim.grad_clip)
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    flat = torch.cat([p.detach().flatten() for p in objective.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        queue.put((min(times[1:]), float((gathered[0] - gathered[1]).abs().max())))
    dist.destroy_process_group()


def check_ddp(steps: int, batch_size: int, device_type: str, failures: list[str]) -> None:
    """DDP over 2 GPUs with NCCL (or, rehearsing, 2 CPU processes with gloo): ms/step and equal parameters on both
    ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(steps, port, queue, device_type, batch_size), nprocs=2,
                       start_method="spawn")
    seconds, diff = queue.get()
    local = batch_size // 2
    report(f"DDP {'2 GPUs (NCCL)' if device_type == 'cuda' else '2 CPU processes (gloo)'}", diff == 0.0,
           f"SGR, batch {batch_size} as 2 x {local} (each rank its own half, hardest negatives within it): "
           f"{1e3 * seconds:.0f} ms/step, max|param difference| between ranks {diff:.1e}", failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sgr", "saf", "tshsr"], choices=["sgr", "saf", "tshsr"])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--captions", type=int, default=2500)
    parser.add_argument("--cpu-images", type=int, default=20, help="images also scored on the CPU (exactness)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="batch of the timed training step and of DDP (split over 2 ranks); the gradient check "
                             "uses at most 32")
    parser.add_argument("--ranking-epochs", type=int, default=1,
                        help="epochs of the ranking check's short run on planted data (0: no ranking check)")
    parser.add_argument("--ranking-images", type=int, default=1000, help="test images of the ranking check")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda: the checks; cpu: a rehearsal of the script with the CPU in the GPU's place")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA device visible: the GPU checks need a CUDA machine (nothing was run; `--device cpu` "
              "rehearses them).")
        return 0
    if device.type == "cuda":
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
              f"{torch.cuda.get_device_name(0)}")
    else:
        print(f"torch {torch.__version__}, rehearsal on the CPU ({torch.get_num_threads()} threads): tf32 is fp32 "
              "here and DDP runs over gloo; it checks the script, not a GPU")
    feats = np.random.default_rng(0).random((args.images, 36, 2048), dtype=np.float32)
    captions = flickr_like_captions(args.captions, 10000)
    failures: list[str] = []
    for name in args.models:
        guarded(f"{name} scoring", failures, check_scoring, name, feats, captions,
                min(args.cpu_images, args.images), device, failures)
    if args.ranking_epochs:
        with tempfile.TemporaryDirectory(prefix="itmatch-gpu-") as work:
            data = write_synthetic(Path(work) / "planted", n_images={**RANKING_TRAIN, "test": args.ranking_images},
                                   feature_dim=RANKING_DIM, seed=1)
            for name in args.models:
                guarded(f"{name} ranking", failures, check_ranking, name, data, Path(work), args.ranking_epochs,
                        device, failures)
    for name in TRAIN_CONFIGS:
        guarded(f"{name} training gradients", failures, check_gradients, name, failures, min(32, args.batch_size),
                ("cpu", device.type))
        guarded(f"{name} training step", failures, check_training, name, args.steps, args.batch_size, device,
                failures)
    if device.type == "cpu" or torch.cuda.device_count() >= 2:
        guarded("DDP", failures, check_ddp, args.steps, args.batch_size, device.type, failures)
    else:
        print("SKIP DDP: fewer than 2 GPUs")
    print(f"{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
