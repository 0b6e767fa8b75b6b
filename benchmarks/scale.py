"""A gallery of a million pictures at the demo's model sizes, and two processes against one.

Gallery (``--pictures``, default 1,000,000): an index folder as `itmatch index build` writes it, with what search
reads generated rather than encoded from region features (1M × 36 × 1286 features would need 185 GB; encoding
them, hours on 2 cores):

- the models: VSE (128-d, the shortlist), SGR and SAF (128-d regions, 64-d similarities) at the demo's sizes,
  random weights, or `make demo`'s trained ones with ``--runs``;
- image embeddings: clustered unit vectors (N/100 clusters, cosine about 0.8 to their centre), the shape of a
  real embedding gallery;
- the re-rankers' stored encodings: the real encodings of ``POOL`` pictures of random region features, repeated
  over the gallery (re-ranking time depends on their shapes, not their values), in ``--store-dtype``;
- ``features.npy``: a sparse file of the right size (explanations are not timed), so it takes no disk.

Measured: build time (stores written, FAISS trained and filled; plus the encoding time the real build would add,
estimated from encoding the pool), disk, peak RSS of the build; then in a fresh process (`--serve-probe`), what
`itmatch serve` does per text query -- `Searcher.search_text` with shortlist 100 re-ranked by SGR + SAF -- p50/p95
over ``--queries`` queries, and the process's RSS (anonymous, i.e. not memory-mapped, and file-backed) for this
gallery and one a tenth its size; the shortlist's recall@100 against exact search for queries near gallery
pictures; and `itmatch evaluate` / `itmatch extract` in one process and in two (`torchrun`), wall clock.

    python benchmarks/scale.py --pictures 50000                  # a few minutes: validate
    python benchmarks/scale.py                                   # 1M pictures: ~40 GB of disk, an hour
    python benchmarks/scale.py --skip-gallery                    # only the 2-process speed-ups
Generated files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import peak_rss

from itmatch.checkpoint import save_model
from itmatch.data.vocab import build_vocab
from itmatch.fileio import write_json
from itmatch.models import create_model
from itmatch.search.build import _store_models, _write_faiss
from itmatch.search.index import (CAPTION_EMB, CAPTION_IMAGE, CAPTIONS, FEATURES, FORMAT, FORMAT_VERSION, IMAGE_EMB,
                                  INDEX_FILE, PICTURES, load_index_models, reranker_dir, segment_dir)

ROOT = Path(__file__).resolve().parents[1]
REGIONS, FEATURE_DIM = 36, 1286  # the demo's: SSD-MobileNetV2 regions
DEMO = {"vse": dict(img_dim=FEATURE_DIM, embed_size=128, word_dim=50, text_encoder="bigru", pooling="gpo"),
        "sgr": dict(img_dim=FEATURE_DIM, embed_size=128, sim_dim=64, word_dim=50),
        "saf": dict(img_dim=FEATURE_DIM, embed_size=128, sim_dim=64, word_dim=50)}
WORDS = ("a an the red blue green yellow black white big small old truck car apple dog cat bird house tree flower "
         "ball letter boat star moon sun on in with of and two three sitting next to").split()
POOL = 512
BLOCK = 65_536


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "itmatch-scale")
    parser.add_argument("--index-type", default="ivfpq", choices=["flat", "ivf", "ivfpq"])
    parser.add_argument("--nlist", type=int, default=None, help="default 4·sqrt(pictures)")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--nprobe", type=int, default=None, help="default nlist/16")
    parser.add_argument("--store-dtype", default="float16", choices=["float32", "float16"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--runs", type=Path, default=None, help="`make demo` runs (vse/sgr/saf/best.pt)")
    parser.add_argument("--eval-images", type=int, default=400, help="pictures of the 2-process evaluate")
    parser.add_argument("--extract-pictures", type=int, default=200, help="pictures of the 2-process extract")
    parser.add_argument("--skip-gallery", action="store_true")
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--serve-probe", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, 12)))) for _ in range(n)]


def demo_models(work: Path, runs: Path | None) -> dict[str, Path]:
    """`make demo`'s models, or random ones of the same sizes saved with a small vocabulary."""
    if runs is not None:
        return {name: runs / name / "best.pt" for name in DEMO}
    vocab = build_vocab(sentences(2000, 0) + [" ".join(WORDS)], threshold=1)
    paths = {}
    for seed, (name, sizes) in enumerate(DEMO.items()):
        torch.manual_seed(seed)
        paths[name] = work / f"{name}.safetensors"
        save_model(paths[name], create_model(name, vocab_size=len(vocab), **sizes).eval(), vocab=vocab.to_json())
    return paths


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def tensor_fields(encoding: object) -> list[str]:
    """The names of an encoding's tensor fields (what an index stores per re-ranker)."""
    return [f.name for f in dataclasses.fields(encoding) if isinstance(getattr(encoding, f.name), torch.Tensor)]


def build_gallery(out: Path, n: int, models: dict[str, Path], args: argparse.Namespace) -> dict:
    """The index folder of ``n`` generated pictures (module docstring); returns what was measured."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    dtype = np.dtype(args.store_dtype)
    rng = np.random.default_rng(0)
    report: dict = {"pictures": n}
    meta = _store_models(out, models["vse"], [models["sgr"], models["saf"]], None)
    loaded = load_index_models(out, meta, "cpu")
    pool = torch.from_numpy(np.abs(rng.standard_normal((POOL, REGIONS, FEATURE_DIM), dtype=np.float32)))
    with torch.inference_mode():
        start = time.perf_counter()
        loaded.embedder.encode_images(pool)
        encodings = [model.encode_images(pool) for model, _ in loaded.rerankers]
        report["encode_pictures_per_s"] = POOL / (time.perf_counter() - start)
    seg = out / segment_dir(0)
    seg.mkdir()
    with peak_rss() as rss:
        start = time.perf_counter()
        np.lib.format.open_memmap(seg / FEATURES, "w+", dtype, (n, REGIONS, FEATURE_DIM))  # sparse
        emb = np.lib.format.open_memmap(seg / IMAGE_EMB, "w+", np.float32, (n, 128))
        centres = unit(rng.standard_normal((max(16, n // 100), 128)))
        for lo in range(0, n, BLOCK):
            hi = min(n, lo + BLOCK)
            noise = rng.standard_normal((hi - lo, 128)).astype(np.float32) * (0.75 / np.sqrt(128))
            emb[lo:hi] = unit(centres[rng.integers(0, len(centres), hi - lo)] + noise)
        emb.flush()
        fields = []
        for k, encoding in enumerate(encodings):
            (seg / reranker_dir(k)).mkdir()
            names = tensor_fields(encoding)
            fields.append(names)
            for name in names:
                value = getattr(encoding, name).numpy()
                array = np.lib.format.open_memmap(seg / reranker_dir(k) / f"{name}.npy", "w+", dtype,
                                                  (n, *value.shape[1:]))
                for lo in range(0, n, BLOCK):
                    hi = min(n, lo + BLOCK)
                    array[lo:hi] = value[np.arange(lo, hi) % POOL]
                array.flush()
                del array
        np.save(seg / CAPTION_EMB, np.zeros((0, 128), np.float32))
        np.save(seg / CAPTION_IMAGE, np.zeros(0, np.int64))
        (seg / CAPTIONS).write_text("")
        with open(seg / PICTURES, "w") as f:
            for lo in range(0, n, BLOCK):
                f.write("".join(f'{{"path": "gallery/{i:08d}.jpg", "width": 640, "height": 480}}\n'
                                for i in range(lo, min(n, lo + BLOCK))))
        report["write_stores_s"] = time.perf_counter() - start
        start = time.perf_counter()
        nlist = args.nlist or round(4 * np.sqrt(n))
        faiss_meta = _write_faiss(out, 1, args.index_type, nlist, args.nprobe or max(1, nlist // 16), [seg],
                                  args.m if args.index_type == "ivfpq" else None)
        report["faiss_s"] = time.perf_counter() - start
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, regions=REGIONS, dim=FEATURE_DIM, extractor=None,
                segments=[{"dir": seg.name, "images": n, "captions": 0, "source": {"kind": "synthetic"}}],
                n_images=n, n_captions=0, index_type=args.index_type, store_dtype=args.store_dtype, faiss=faiss_meta)
    meta["rerankers"] = [{**entry, "fields": names} for entry, names in zip(meta["rerankers"], fields)]
    write_json(out / INDEX_FILE, meta)
    report["build_peak_rss_mb"] = rss["peak"] / 2**20
    report["encode_estimate_s"] = n / report["encode_pictures_per_s"]
    report["disk_gb"] = sum(p.stat().st_blocks * 512 for p in out.rglob("*") if p.is_file()) / 1e9
    report["features_apparent_gb"] = (seg / FEATURES).stat().st_size / 1e9
    report["faiss"] = faiss_meta
    return report


def float16_difference(models: dict[str, Path], queries: int) -> dict[str, float]:
    """SGR + SAF scores of ``POOL`` pictures × text queries from float32 encodings and from their float16
    copies (what ``--store-dtype float16`` stores): the largest difference, the scores' spread, and how often a
    query's top 10 changes order."""
    from itmatch.loading import load_models
    from itmatch.scoring import encode_texts

    rng = np.random.default_rng(2)
    pool = torch.from_numpy(np.abs(rng.standard_normal((POOL, REGIONS, FEATURE_DIM), dtype=np.float32)))
    totals = [np.zeros((POOL, queries)), np.zeros((POOL, queries))]
    with torch.inference_mode():
        for name in ("sgr", "saf"):
            model, vocab = load_models([models[name]], None)
            images = model.encode_images(pool)
            half = dataclasses.replace(images, **{name: getattr(images, name).half().float()
                                                  for name in tensor_fields(images)})
            for index, texts in encode_texts(model, vocab.encode_all(sentences(queries, 3)), torch.device("cpu")):
                totals[0][:, index] += model.score(images, texts).numpy() / 2
                totals[1][:, index] += model.score(half, texts).numpy() / 2
    full, half_scores = totals
    top = [np.array_equal(np.argsort(-full[:, j])[:10], np.argsort(-half_scores[:, j])[:10]) for j in range(queries)]
    return {"max_abs_difference": float(np.abs(full - half_scores).max()), "score_std": float(full.std()),
            "top10_order_changed": 1 - float(np.mean(top))}


def recall_at_100(index_dir: Path, queries: int, nprobes: list[int]) -> dict[int, float]:
    """Mean overlap of the FAISS index's top 100 with exact search's, for queries near gallery pictures."""
    from itmatch.search import open_index
    from itmatch.search.vectors import make_faiss

    index = open_index(index_dir)
    emb = np.load(index_dir / segment_dir(0) / IMAGE_EMB, mmap_mode="r")
    rng = np.random.default_rng(1)
    picks = np.sort(rng.choice(len(emb), queries, replace=False))
    q = unit(emb[picks] + rng.standard_normal((queries, emb.shape[1])).astype(np.float32) * (0.5 / np.sqrt(128)))
    _, exact = make_faiss([emb], "flat").search(q, 100)
    result = {}
    for nprobe in nprobes:
        index.image_faiss.nprobe = nprobe
        _, found = index.image_faiss.search(q, 100)
        result[nprobe] = float(np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(exact, found)]))
    return result


def serve_probe(index_dir: Path, queries: int) -> None:
    """(In a fresh process) open the index as `itmatch serve` does, time text queries, print JSON."""
    from itmatch.search import Searcher

    def status() -> dict[str, float]:
        lines = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return {key: int(lines[key].split()[0]) / 1024 for key in ("VmHWM", "RssAnon", "RssFile")}

    searcher = Searcher(index_dir)
    opened = status()
    texts = sentences(queries + 5, 7)
    for text in texts[:5]:
        searcher.search_text(text, top=10, shortlist=100)
    seconds = []
    for text in texts[5:]:
        start = time.perf_counter()
        searcher.search_text(text, top=10, shortlist=100)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"p50_ms": 1000 * float(np.percentile(seconds, 50)),
                      "p95_ms": 1000 * float(np.percentile(seconds, 95)), "opened_mb": opened,
                      "after_mb": status()}))


def run_probe(index_dir: Path, queries: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--serve-probe", str(index_dir), "--queries", str(queries)],
                          env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start


def speedups(work: Path, models: dict[str, Path], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Wall seconds of `itmatch evaluate` (SGR) and `itmatch extract` (SSD-MobileNetV2), 1 process vs 2."""
    from search_support import PICTURES, draw_picture

    from itmatch.data import write_synthetic

    # one thread a process, for torch and for OpenCV's DNN (the extractor), so 2 processes use 2 cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1", "PYTHONPATH": str(ROOT)}
    one = [sys.executable, "-m", "itmatch"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "itmatch"]
    data = write_synthetic(work / "eval", n_images={"train": 2, "dev": 2, "test": args.eval_images},
                           feature_dim=FEATURE_DIM)
    # the synthetic captions need their own vocabulary: a demo-sized SGR over it
    from itmatch.data.vocab import load_vocab

    vocab = load_vocab(data / "vocab.json")
    torch.manual_seed(0)
    sgr = work / "eval-sgr.safetensors"
    save_model(sgr, create_model("sgr", vocab_size=len(vocab), **DEMO["sgr"]).eval(), vocab=vocab.to_json())
    evaluate = ["evaluate", "--data", str(data), "--checkpoint", str(sgr), "--output", str(work / "e.json"),
                "--no-progress"]
    pictures = work / "pictures"
    pictures.mkdir(exist_ok=True)
    for i in range(args.extract_pictures):
        name, colour, shape = PICTURES[i % len(PICTURES)]
        draw_picture(pictures / f"{i:05d}_{name}_{shape}.png", colour, shape, size=160 + i % 40)
    result = {}
    for task, argv in (("evaluate", evaluate), ("extract", ["extract", "--images", str(pictures), "--no-progress"])):
        times = {"one": [], "two": []}
        for _ in range(2):  # interleaved; the minimum of each
            for key, launcher in (("one", one), ("two", two)):
                out = ["--out", str(work / f"feats-{key}")] if task == "extract" else []
                shutil.rmtree(work / f"feats-{key}", ignore_errors=True)
                times[key].append(timed([*launcher, *argv, *out], env))
        result[task] = {"one_s": min(times["one"]), "two_s": min(times["two"]),
                        "speedup": min(times["one"]) / min(times["two"])}
    return result


def main() -> None:
    args = parse()
    if args.serve_probe is not None:
        serve_probe(args.serve_probe, args.queries)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.get_num_threads()}")
    try:
        models = demo_models(args.work, args.runs)
        if not args.skip_gallery:
            built = build_gallery(args.work / "index", args.pictures, models, args)
            print(json.dumps(built, indent=1), flush=True)
            nprobe = built["faiss"].get("nprobe", 1)
            recall = recall_at_100(args.work / "index", args.queries, [nprobe, 2 * nprobe, 4 * nprobe])
            print("recall@100 vs exact search, by nprobe:", json.dumps(recall), flush=True)
            big = run_probe(args.work / "index", args.queries)
            print(f"serve, {args.pictures} pictures:", json.dumps(big), flush=True)
            small = build_gallery(args.work / "small", max(1000, args.pictures // 10), models, args)
            probe = run_probe(args.work / "small", args.queries)
            print(f"serve, {small['pictures']} pictures:", json.dumps(probe), flush=True)
            print("float16 stores vs float32, SGR + SAF scores:", json.dumps(float16_difference(models, 64)))
        if not args.skip_distributed:
            print("1 vs 2 processes:", json.dumps(speedups(args.work, models, args)), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
