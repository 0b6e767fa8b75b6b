"""Two-stage retrieval against exhaustive re-ranking: pair scorings, seconds and rsum, side by side in one run.

Exhaustive: the scoring engine scores every (picture, caption) pair with the cross-attention model(s), as
`itmatch evaluate` does; one matrix serves both directions. Two-stage: an index of the test split (built first,
not timed), then `Searcher` queries: every caption shortlists ``k`` pictures by the embedding model (VSE) and the
re-rankers score those pairs (text → image); every picture shortlists ``k_captions`` captions (image → text).
For the recalls, candidates outside a shortlist rank after it, in embedding order. Printed per set and shortlist:
pairs scored, seconds, R@1/5/10 both ways and rsum, and the ratios.

Sets:
- ``tuxpaint``: the Tux Paint test split (150 pictures, one caption each) with `make demo`'s VSE, SGR and SAF
  (``--runs``, default runs/demo; re-ranker SGRAF = SGR + SAF);
- ``synthetic``: a planted synthetic set of Flickr30K's test size (1,000 pictures × 5,000 captions; 2,000
  training pictures, 512-d regions), with a VSE and an SGR trained a few epochs on its train split by
  `itmatch train` with the demo recipes (built once in ``--work``; about 10 minutes on 2 cores).

    python benchmarks/two_stage.py                                  # both sets
    python benchmarks/two_stage.py --sets tuxpaint --runs /tmp/demo_runs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from itmatch.data import write_synthetic
from itmatch.data.precomp import ImageRows, load_split
from itmatch.loading import load_models
from itmatch.metrics import i2t_ranks, summarize, t2i_ranks
from itmatch.models.ensemble import Ensemble
from itmatch.scoring import score_matrix
from itmatch.search import Searcher, build_index

ROOT = Path(__file__).resolve().parents[1]
#: (pictures, captions) each query shortlists, per set: about 1/20 and 1/10 of the gallery, and more.
SHORTLISTS = {"tuxpaint": [(7, 7), (15, 15), (30, 30)], "synthetic": [(25, 125), (50, 250), (100, 500)]}
SYNTHETIC = {"train": 2000, "dev": 200, "test": 1000}
SYNTHETIC_DIM = 512


def synthetic_models(work: Path) -> tuple[Path, dict[str, Path]]:
    """The planted synthetic data and a VSE and an SGR trained on it (demo recipes, a few epochs)."""
    data = work / "synthetic"
    if not (data / "vocab.json").is_file():
        write_synthetic(data, n_images=SYNTHETIC, feature_dim=SYNTHETIC_DIM, seed=0, progress=True)
    runs = {}
    for name, epochs in (("vse", 4), ("sgr", 8)):
        runs[name] = work / "runs" / name / "best.pt"
        if runs[name].is_file():
            continue
        args = [sys.executable, "-m", "itmatch", "train", "--config", str(ROOT / "configs" / f"demo_{name}.toml"),
                "--data", str(data), "--vocab", str(data / "vocab.json"), "--out", str(runs[name].parent),
                "--no-progress", "--set", f"model.args.img_dim={SYNTHETIC_DIM}", "--set", f"schedule.epochs={epochs}"]
        print(f"training {name} on the synthetic train split ({epochs} epochs)...", flush=True)
        subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    return data, runs


def tuxpaint_models(runs: Path) -> tuple[Path, dict[str, Path]]:
    return ROOT / "data" / "tuxpaint", {name: runs / name / "best.pt" for name in ("vse", "sgr", "saf")}


def two_stage_scores(searcher: Searcher, split, first: np.ndarray, k_images: int, k_captions: int
                     ) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(t2i matrix, i2t matrix, pairs scored, seconds): re-ranked scores where shortlisted, else the embedding
    score ``first`` (pictures × captions) minus 10 (below any re-ranker score, in embedding order)."""
    index = searcher.index
    t2i, i2t = first - 10, first - 10
    start = time.perf_counter()
    by_text = searcher.search_texts(split.captions, top=k_images, shortlist=k_images)
    by_picture = searcher.search_features(index.features(np.arange(index.n_images)), top=k_captions,
                                          shortlist=k_captions)
    seconds = time.perf_counter() - start
    for caption, result in enumerate(by_text):
        for hit in result.hits:
            t2i[hit["image"], caption] = hit["score"]
    for image, result in enumerate(by_picture):
        for hit in result.hits:
            i2t[image, hit["caption_id"]] = hit["score"]
    pairs = sum(r.candidates for r in by_text) + sum(r.candidates for r in by_picture)
    return t2i, i2t, pairs, seconds


def recalls(i2t_sims: np.ndarray, t2i_sims: np.ndarray, caption_image: np.ndarray) -> tuple[dict, dict, float]:
    i2t = summarize(i2t_ranks(i2t_sims, caption_image))
    t2i = summarize(t2i_ranks(t2i_sims, caption_image))
    return i2t, t2i, sum(i2t[f"r{k}"] + t2i[f"r{k}"] for k in (1, 5, 10))


def line(label: str, pairs: int, seconds: float, i2t: dict, t2i: dict, rsum: float) -> str:
    scores = " ".join(f"{d[f'r{k}']:5.1f}" for d in (i2t, t2i) for k in (1, 5, 10))
    return f"  {label:<34} {pairs:>10,} pairs {seconds:8.1f} s   {scores}   rsum {rsum:6.1f}"


def run_set(name: str, data: Path, models: dict[str, Path], work: Path) -> None:
    rerankers = [models[m] for m in ("sgr", "saf") if m in models]
    split = load_split(data, "test")
    index_dir = work / f"index-{name}"
    build_index(data, index_dir, split="test", embedder=models["vse"], rerankers=rerankers)
    searcher = Searcher(index_dir)
    loaded = [load_models([path], None) for path in rerankers]
    model = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded])
    vocab = loaded[0][1]
    start = time.perf_counter()
    exhaustive = score_matrix(model, ImageRows(split, np.arange(split.n_images)), vocab.encode_all(split.captions))
    exhaustive_s = time.perf_counter() - start
    pairs = split.n_images * split.n_captions
    names = " + ".join(m.model_name for m, _ in loaded)
    print(f"\n{name}: {split.n_images:,} pictures × {split.n_captions:,} captions; VSE shortlists, {names} re-ranks")
    print(f"  {'':<34} {'':>16} {'':>10}   i2t R@1 R@5 R@10, t2i R@1 R@5 R@10")
    base = recalls(exhaustive, exhaustive, split.caption_image)
    print(line("exhaustive re-ranking", pairs, exhaustive_s, *base))
    first = searcher.index.image_embeddings(np.arange(split.n_images)) @ \
        searcher.index.caption_embeddings(np.arange(split.n_captions)).T
    print(line("VSE alone (embeddings)", 0, 0.0, *recalls(first, first, split.caption_image)))
    for k_images, k_captions in SHORTLISTS[name]:
        t2i, i2t, scored, seconds = two_stage_scores(searcher, split, first, k_images, k_captions)
        i2t_m, t2i_m, rsum = recalls(i2t, t2i, split.caption_image)
        print(line(f"two-stage, {k_images} pictures / {k_captions} captions", scored, seconds, i2t_m, t2i_m, rsum))
        print(f"  {'':<34} -> {pairs / scored:.1f}× fewer pair scorings (text→image {split.n_images / k_images:.0f}×,"
              f" image→text {split.n_captions / k_captions:.0f}× per query), {exhaustive_s / seconds:.1f}× less time, "
              f"rsum {rsum - base[2]:+.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["tuxpaint", "synthetic"], choices=["tuxpaint", "synthetic"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="make demo's run folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/itmatch-two-stage"))
    args = parser.parse_args()
    for name in args.sets:
        data, models = tuxpaint_models(args.runs) if name == "tuxpaint" else synthetic_models(args.work)
        run_set(name, data, models, args.work)


if __name__ == "__main__":
    main()
