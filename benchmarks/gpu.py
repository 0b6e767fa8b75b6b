"""GPU readiness: exactness, mixed precision and speed of the engine and the training step on CUDA.

On a CUDA machine, at the papers' sizes (36 × 2048 regions, d 1024, sim 256, Flickr30K-like captions, random
weights), for SGR, SAF and TSHSR:

1. fp32 on the GPU = the CPU engine: max |difference| of the scores ≤ 1e-5 (TF32 off);
2. tf32 and bf16 (autocast): max |difference| of the scores from fp32 ≤ 5e-3 (tf32) / 3e-2 (bf16), and the
   rsum of the slice (5 captions per image) within 1.0 / 3.0 points of fp32's;
3. pairs/s of the engine in each precision (``--images`` × ``--captions``, after a warm-up);
4. SGR, SAF: one training loss and its gradients at batch 32 on the GPU = the CPU's (relative difference ≤ 1e-4;
   fp32, dropout off), then one training step at batch 128 (forward, loss, backward, clipping, Adam): ms/step;
5. with 2 or more GPUs: DDP over 2 GPUs with NCCL (SGR, batch 128 split over the ranks): ms/step, and the
   parameters of both ranks equal after the steps.

Prints one line per check with PASS/FAIL; exits 1 if any check fails, 0 when all pass, and 0 with a message
when no CUDA device is present (nothing to check on this machine).

    python benchmarks/gpu.py                       # all checks
    python benchmarks/gpu.py --models sgr --images 200 --captions 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from common import flickr_like_captions
from train_step import CONFIGS as TRAIN_CONFIGS
from train_step import make_batch

from itmatch.metrics import retrieval_metrics
from itmatch.models import create_model
from itmatch.scoring import precision_context, score_matrix

#: precision -> (max |score difference| from fp32, max |rsum difference| from fp32)
TOLERANCES = {"tf32": (5e-3, 1.0), "bf16": (3e-2, 3.0)}
EXACT = 1e-5
#: Largest relative difference (L2) of the loss and of each parameter's gradient between GPU and CPU, fp32.
GRADIENT_TOLERANCE = 1e-4


def report(name: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def check_scoring(name: str, feats: np.ndarray, captions: list[list[int]], cpu_images: int,
                  failures: list[str]) -> None:
    """Exactness against the CPU, mixed-precision tolerances and pairs/s of one model."""
    torch.manual_seed(0)
    model = create_model(name, vocab_size=10000).eval()
    cpu = score_matrix(model, feats[:cpu_images], captions, device="cpu")
    model.cuda()
    caption_image = np.arange(len(captions)) // (len(captions) // len(feats))
    reference = None
    for precision in ("fp32", "tf32", "bf16"):
        score_matrix(model, feats[:8], captions[:16], device="cuda", precision=precision)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        scores = score_matrix(model, feats, captions, device="cuda", precision=precision)
        seconds = time.perf_counter() - start
        rsum = retrieval_metrics(scores, caption_image)["rsum"]
        rate = f"{scores.size / seconds:,.0f} pairs/s ({seconds:.1f} s, rsum {rsum:.1f})"
        if precision == "fp32":
            reference = (scores, rsum)
            diff = float(np.abs(scores[:cpu_images] - cpu).max())
            report(f"{name} fp32 GPU = CPU", diff <= EXACT, f"max|diff| {diff:.1e} (<= {EXACT:.0e}); {rate}", failures)
            continue
        limit, rsum_limit = TOLERANCES[precision]
        diff = float(np.abs(scores - reference[0]).max())
        rsum_diff = abs(rsum - reference[1])
        report(f"{name} {precision}", diff <= limit and rsum_diff <= rsum_limit,
               f"max|diff| from fp32 {diff:.1e} (<= {limit:.0e}), rsum diff {rsum_diff:.2f} (<= {rsum_limit}); {rate}",
               failures)


def make_training(name: str, batch_size: int, device: torch.device, seed: int = 0):
    """(objective, optimizer, batch, config) of a batch-``batch_size`` training step of ``name`` on ``device``."""
    from itmatch.train.config import load_config
    from itmatch.train.loop import make_optimizer
    from itmatch.train.objective import TrainingObjective

    config = load_config(TRAIN_CONFIGS[name])
    torch.manual_seed(seed)
    model = create_model(name, vocab_size=8481, **config.model.args).to(device).train()
    return TrainingObjective(model, config.loss), make_optimizer(config, model), make_batch(batch_size, 8481), config


def check_training(name: str, steps: int, failures: list[str]) -> None:
    """ms per training step at batch 128 on one GPU."""
    from itmatch.train.loop import training_step

    device = torch.device("cuda")
    objective, optimizer, batch, config = make_training(name, 128, device)
    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        logs = training_step(objective, optimizer, batch, config, device)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    loss = float(next(iter(logs.values())))
    report(f"{name} training step", bool(np.isfinite(loss)),
           f"batch 128: {1e3 * min(times[1:]):.0f} ms/step (first step {1e3 * times[0]:.0f} ms), loss {loss:.3f}",
           failures)


def check_gradients(name: str, failures: list[str], batch_size: int = 32,
                    devices: tuple[str, str] = ("cpu", "cuda")) -> None:
    """One training loss and its gradients on the GPU equal the CPU's (fp32, TF32 off, dropout off, the same
    initial weights and batch): the hand-written backward passes (``GraphStep``, ``ProjectedSquares``) run on
    CUDA as on the CPU, and the CPU's GRU recurrence (``recurrent.py``) agrees with cuDNN's GRU."""
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


def _ddp_worker(rank: int, steps: int, port: int, queue) -> None:
    """One rank of the DDP check: SGR, the global batch of 128 split over 2 ranks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=2)
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    objective, optimizer, batch, config = make_training("sgr", 128, device)
    objective = DistributedDataParallel(objective, device_ids=[rank])
    half = slice(64 * rank, 64 * (rank + 1))
    features, tokens, lengths = batch.features[half].to(device), batch.tokens[half].to(device), batch.lengths[half]
    images = torch.arange(64, device=device)
    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = objective(features, tokens, lengths, images, 0, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), config.optim.grad_clip)
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    flat = torch.cat([p.detach().flatten() for p in objective.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        queue.put((min(times[1:]), float((gathered[0] - gathered[1]).abs().max())))
    dist.destroy_process_group()


def check_ddp(steps: int, failures: list[str]) -> None:
    """DDP over 2 GPUs with NCCL: ms/step and equal parameters on both ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(steps, port, queue), nprocs=2, start_method="spawn")
    seconds, diff = queue.get()
    report("DDP 2 GPUs (NCCL)", diff == 0.0,
           f"SGR, batch 128 as 2 x 64 (each rank its own half, hardest negatives within it): "
           f"{1e3 * seconds:.0f} ms/step, max|param difference| between ranks {diff:.1e}", failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sgr", "saf", "tshsr"], choices=["sgr", "saf", "tshsr"])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--captions", type=int, default=2500)
    parser.add_argument("--cpu-images", type=int, default=20, help="images also scored on the CPU (exactness)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after a warm-up)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device visible: the GPU checks need a CUDA machine (nothing was run).")
        return 0
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x "
          f"{torch.cuda.get_device_name(0)}")
    feats = np.random.default_rng(0).random((args.images, 36, 2048), dtype=np.float32)
    captions = flickr_like_captions(args.captions, 10000)
    failures: list[str] = []
    for name in args.models:
        check_scoring(name, feats, captions, min(args.cpu_images, args.images), failures)
    for name in TRAIN_CONFIGS:
        check_gradients(name, failures)
        check_training(name, args.steps, failures)
    if torch.cuda.device_count() >= 2:
        check_ddp(args.steps, failures)
    else:
        print("SKIP DDP: fewer than 2 GPUs")
    print(f"{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
