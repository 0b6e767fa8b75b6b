"""`itmatch data ...`: vocabulary, synthetic-data and dataset-building (`data build`) commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from itmatch.cli import build
from itmatch.data.folder import dataset_files
from itmatch.data.precomp import read_captions
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import build_vocab, save_vocab
from itmatch.fileio import check_outputs

app = typer.Typer(help="Build vocabularies and datasets.", no_args_is_help=True)
app.add_typer(build.app, name="build")


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the precomp files and vocab.json into.")],
    images: Annotated[int, typer.Option(help="Training images (also dev/test unless given).", min=1)],
    dev_images: Annotated[int | None, typer.Option(help="Dev images (default: as --images).", min=1)] = None,
    test_images: Annotated[int | None, typer.Option(help="Test images (default: as --images).", min=1)] = None,
    testall_images: Annotated[int, typer.Option(help="Images of a 'testall' split (0: none).", min=0)] = 0,
    captions_per_image: Annotated[int, typer.Option(help="Captions per image.", min=1)] = 5,
    regions: Annotated[int, typer.Option(help="Regions per image.", min=1)] = 36,
    dim: Annotated[int, typer.Option(help="Feature dimension per region.", min=1)] = 2048,
    repeat_images: Annotated[
        bool, typer.Option(help="Store each image 5 times in *_ims.npy, like some released files.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.", min=0)] = 0,
) -> None:
    """Write planted synthetic data in the SCAN precomp format (features whose regions show the captions' words).

    Example: itmatch data synth --out data/synth --images 1000 --test-images 200
    """
    counts = {
        "train": images,
        "dev": images if dev_images is None else dev_images,
        "test": images if test_images is None else test_images,
    }
    if testall_images:
        counts["testall"] = testall_images
    write_synthetic(
        out,
        n_images=counts,
        captions_per_image=captions_per_image,
        n_regions=regions,
        feature_dim=dim,
        repeat_images=repeat_images,
        seed=seed,
        progress=True,
    )
    sizes = ", ".join(f"{split} {n} images" for split, n in counts.items())
    typer.echo(f"wrote synthetic precomp data to {out}: {sizes}, {captions_per_image} captions each, vocab.json")


@app.command("vocab")
def vocab(
    captions: Annotated[list[Path], typer.Option(help="Caption file, one caption a line (repeatable).")],
    out: Annotated[Path, typer.Option(help="Vocabulary JSON to write (the authors' layout).")],
    threshold: Annotated[int, typer.Option(help="Keep words seen at least this many times.", min=1)] = 4,
) -> None:
    """Build a vocabulary from caption files, with the authors' tokenizer and threshold rule.

    Example: itmatch data vocab --captions data/f30k/train_caps.txt --captions data/f30k/dev_caps.txt --out vocab.json
    """
    datasets = [file for path in captions for file in dataset_files(path.parent)]  # the captions' other files
    check_outputs({"--out": out}, {"--captions": captions, "a file of the captions' dataset": datasets})
    texts = [caption for path in captions for caption in read_captions(path)]
    built = build_vocab(texts, threshold=threshold)
    save_vocab(built, out)
    typer.echo(
        f"wrote {out}: {len(built)} words (threshold {threshold}) from {len(texts)} captions in {len(captions)} files"
    )
