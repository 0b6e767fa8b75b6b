"""`itmatch index build|add`: the search index over a gallery of pictures (see docs/search.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli.options import EMBEDDERS, Device, Features, Progress, Split

app = typer.Typer(help="Build a search index over pictures, or add pictures to one.", no_args_is_help=True)


@app.command("build")
def build(
    features: Annotated[list[Path], typer.Option(
        help="An `itmatch extract` folder (features.npy, images.jsonl) or a dataset folder (with --split); repeat "
             "for several folders (e.g. shards of one large extraction), each becomes a segment.")],
    embedder: Annotated[Path, typer.Option(help=f"Embedding model ({EMBEDDERS}) that shortlists by one vector each.")],
    out: Annotated[Path, typer.Option(help="New index folder (an earlier index there is replaced).")],
    reranker: Annotated[list[Path] | None, typer.Option(
        help="Cross-attention model (sgr, saf, tshsr) re-ranking the shortlist; repeat for an ensemble (SGRAF).")
    ] = None,
    split: Split = None,
    vocab: Annotated[Path | None, typer.Option(
        help="Vocabulary JSON for checkpoints that store none (e.g. the authors' releases).")] = None,
    index_type: Annotated[str, typer.Option(
        help="auto (exact below 100,000 pictures, IVF above), flat (exact), ivf, or ivfpq (product-quantised: "
             "--m bytes a picture, for millions; see docs/scale.md).")] = "auto",
    nlist: Annotated[int | None, typer.Option(help="IVF lists (default about 4·sqrt(pictures)).", min=1)] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists searched per query (default nlist/8).", min=1)] = None,
    m: Annotated[int | None, typer.Option(
        "--m", help="IVF-PQ bytes (sub-vectors) per picture; must divide the embedding size (default size/4).",
        min=1)] = None,
    store_dtype: Annotated[str, typer.Option(
        help="float32, or float16: half the disk for the stored region features and re-ranker encodings "
             "(scores change by less than 1e-3; docs/scale.md).")] = "float32",
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """Index pictures: embeddings in FAISS, region features and re-ranker encodings memory-mapped, captions.

    The model files are copied into the index, so `itmatch search` and `itmatch serve` need only --index.

    Examples:

      itmatch index build --features data/tuxpaint --split test --embedder runs/demo/vse/best.pt
        --reranker runs/demo/sgr/best.pt --reranker runs/demo/saf/best.pt --out index/tuxpaint

      itmatch index build --features photos-features --embedder vse.safetensors --reranker sgr.safetensors
        --out index/photos

      itmatch index build --features part1 --features part2 --embedder vse.pt --reranker sgr.pt --reranker saf.pt
        --index-type ivfpq --nlist 4096 --m 32 --nprobe 64 --store-dtype float16 --out index/millions
    """
    from itmatch.search import build_index

    meta = build_index(features, out, embedder=embedder, rerankers=reranker or [], split=split, vocab=vocab,
                       index_type=index_type, nlist=nlist, nprobe=nprobe, m=m, store_dtype=store_dtype,
                       device=device, progress=progress)
    typer.echo(f"wrote {out}: {meta['n_images']} pictures, {meta['n_captions']} captions, {meta['faiss']['kind']} "
               f"FAISS index; {_models(meta)}")


@app.command("add")
def add(
    index: Annotated[Path, typer.Option(help="The index folder to add to.")],
    features: Features,
    split: Split = None,
    device: Device = "cpu",
    progress: Progress = True,
) -> None:
    """Add pictures to an index as a new segment, encoded with the index's models and stored in its formats
    (FAISS kind, --store-dtype); nothing is rebuilt, and pictures the index already holds (same file, size and
    modification time) are skipped.

    Example: itmatch extract --images new_photos/ --out new-features && itmatch index add --index index/photos
      --features new-features
    """
    from itmatch.search import add_to_index

    meta = add_to_index(index, features, split=split, device=device, progress=progress)
    skipped = f"; skipped {meta['skipped']} pictures already in it" if meta["skipped"] else ""
    typer.echo(f"updated {index}: {meta['n_images']} pictures, {meta['n_captions']} captions in "
               f"{len(meta['segments'])} segments{skipped}")


def _models(meta: dict) -> str:
    rerankers = " + ".join(entry["model_name"] for entry in meta["rerankers"]) or "no re-ranker"
    return f"shortlist by {meta['embedder']['model_name']}, re-rank by {rerankers}"
