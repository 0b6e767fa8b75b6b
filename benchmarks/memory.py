"""Peak resident memory of `itmatch train` on an MS-COCO-size training split that cannot fit in RAM.

Writes a planted synthetic split of ``--images`` images × 36 regions × 2048 float32 (113,287 images, MS-COCO's
train split: ~33 GB; written once, block by block) plus a small dev split under ``--dir``, trains SGR for
``--steps`` steps at batch 128 reading the features memory-mapped batch by batch, and prints the peak RSS of the
process (sampled every 20 ms; it counts mapped file pages too). The folder is deleted afterwards unless
``--keep`` (a kept folder is reused by the next run).

``--model small`` (embed 64, similarity 32; the regions stay 2048-d) measures the data path at a speed a CPU
allows; ``--model full`` trains the papers' sizes. SGR's hardest-negative step records only the ≤ 384 pairs its
loss reads (``itmatch.train.active_pairs``), so a CPU run keeps no batch-sized pair activations; before that
they took several GB at batch 128 (16,384 pairs × ~15 words), and ``--recompute`` (it sets
``run.recompute_activations``: each caption chunk's pair activations recomputed in the backward pass) was the way
to keep less. It still applies where the whole score matrix is recorded.

    python benchmarks/memory.py                                  # 113,287 images, 200 steps, small model
    python benchmarks/memory.py --model full --steps 5 --keep    # the papers' model, a few steps
    python benchmarks/memory.py --model full --steps 5 --recompute   # ... keeping less for the backward pass
    python benchmarks/memory.py --images 5000 --steps 20         # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import peak_rss

from itmatch.data import write_synthetic
from itmatch.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]
MODEL_SIZES = {"small": ["model.args.embed_size=64", "model.args.sim_dim=32", "model.args.word_dim=64"],
               "full": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/itmatch_memory"), help="where the split is written")
    parser.add_argument("--images", type=int, default=113_287, help="training images (MS-COCO: 113,287)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", choices=sorted(MODEL_SIZES), default="small")
    parser.add_argument("--recompute", action="store_true", help="run.recompute_activations = true")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (and reuse it next time)")
    args = parser.parse_args()

    data, out = args.dir / "data", args.dir / f"run_{args.model}"
    marker = data / f"complete_{args.images}"
    if not marker.exists():
        shutil.rmtree(args.dir, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic(data, n_images={"train": args.images, "dev": 100}, progress=True)
        marker.touch()
        print(f"wrote {args.images} training images in {time.perf_counter() - start:.0f} s")
    shutil.rmtree(out, ignore_errors=True)
    size = (data / "train_ims.npy").stat().st_size
    config = load_config(ROOT / "configs" / "sgr_coco.toml",
                         [*MODEL_SIZES[args.model], f"data.batch_size={args.batch_size}",
                          f"run.max_steps={args.steps}", f"run.checkpoint_every={args.steps}",
                          f"run.recompute_activations={str(args.recompute).lower()}"])
    try:
        with peak_rss() as rss:
            start = time.perf_counter()
            train(config, data=data, vocab=data / "vocab.json", out=out, device="cpu")
            seconds = time.perf_counter() - start
        read = args.steps * args.batch_size * 36 * 2048 * 4
        mode = ", activations recomputed" if args.recompute else ""
        print(f"{args.steps} steps of SGR ({args.model}{mode}) at batch {args.batch_size} on a {size / 2**30:.1f} GiB "
              f"split in {seconds:.0f} s ({read / 2**30:.1f} GiB of features read): peak RSS "
              f"{rss['peak'] / 2**30:.2f} GiB (at start {rss['start'] / 2**30:.2f} GiB)")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
