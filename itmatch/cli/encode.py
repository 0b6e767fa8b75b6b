"""`itmatch encode`: a split's embeddings under an embedding model (the library's ``itmatch.embeddings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from itmatch.cli.options import EMBEDDERS, Device, Progress, TrustCheckpoint
from itmatch.embeddings import encode_split


def encode(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help=f"An embedding model ({EMBEDDERS}).")],
    data: Annotated[Path, typer.Option(help="Precomp folder ({split}_ims.npy, {split}_caps.txt).")],
    out: Annotated[Path, typer.Option(help="Output folder for images.npy, captions.npy, embeddings.json.")],
    split: Annotated[str, typer.Option(help="train, dev, test or testall.")] = "test",
    vocab: Annotated[Optional[Path], typer.Option(
        help="Vocabulary JSON of a Bi-GRU model (default: the one stored in the checkpoint).")] = None,
    device: Device = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images or captions encoded at once.", min=1)] = 128,
    trust_checkpoint: TrustCheckpoint = False,
    progress: Progress = True,
) -> None:
    """Write the L2-normalised image and caption embeddings of a split (memory-mappable .npy files).

    Examples:

      itmatch encode --checkpoint runs/hrem_f30k/best.pt --data data/f30k_precomp --split test --out emb/f30k_test

      itmatch encode -c vse.safetensors --data data/coco_precomp --split testall --out emb/coco --device cuda
    """
    meta = encode_split(checkpoint, data, split, out, vocab=vocab, device=device, batch_size=batch_size,
                        trust=trust_checkpoint, progress=progress)
    typer.echo(f"wrote {out}: {meta['n_images']} images, {meta['n_captions']} captions, {meta['dim']}-d "
               f"({meta['model_name']}) in {meta['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    """Add `itmatch encode` to the top-level app."""
    app.command()(encode)
