"""Top-level model commands: `itmatch evaluate`, `itmatch convert`, `itmatch models`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from itmatch.cli.options import Device, Progress, TrustCheckpoint
from itmatch.errors import ItmatchError

#: File-name endings of model files, longest first (``default_output`` drops them).
MODEL_SUFFIXES = (".pth.tar", ".safetensors", ".pt", ".pth", ".tar")

Checkpoints = Annotated[Optional[list[Path]], typer.Option(
    "--checkpoint", "-c", help="Model file (.safetensors, itmatch training checkpoint, or an SGRAF release "
                               ".pth.tar). Repeat to evaluate the ensemble (mean of scores).")]


def evaluate(
    data: Annotated[Optional[Path], typer.Option(
        help="Precomp folder ({split}_ims.npy, {split}_caps.txt); optional with --sims in the n × 5n layout.")] = None,
    checkpoint: Checkpoints = None,
    sims: Annotated[Optional[list[Path]], typer.Option(
        help="Saved score matrix .npy (images × captions) instead of a model; repeat to average.")] = None,
    captions_per_image: Annotated[Optional[int], typer.Option(
        help="With --sims and no --data: captions per image, in image order (default 5, the authors' layout).",
        min=1)
    ] = None,
    split: Annotated[str, typer.Option(help="train, dev, test or testall.")] = "test",
    vocab: Annotated[Optional[Path], typer.Option(
        help="The authors' vocabulary JSON (default: the one stored in the checkpoint).")] = None,
    protocol: Annotated[Optional[str], typer.Option(
        help="f30k, coco1k or coco5k; omit to score the whole split.")] = None,
    device: Device = "cpu",
    precision: Annotated[str, typer.Option(help="fp32 (exact), tf32 or bf16 (GPU speed-ups).")] = "fp32",
    max_memory: Annotated[Optional[int], typer.Option(
        help="Working memory of one scoring tile in MiB (default suits the device).", min=1)] = None,
    dev_subset: Annotated[bool, typer.Option(
        help="Use the authors' 1,000-image dev subset (first 5,000 captions).")] = False,
    save_sims: Annotated[Optional[Path], typer.Option(
        help="Write the float32 score matrix (coco1k: FILE.fold{k}.npy per fold).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="Result JSON (default: beside the first checkpoint).")] = None,
    trust_checkpoint: TrustCheckpoint = False,
    progress: Progress = True,
) -> None:
    """Score a split and report R@1/5/10, medr, meanr both ways and rsum.

    Examples:

      itmatch evaluate --data data/f30k_precomp --vocab vocab/f30k_precomp_vocab.json
        --checkpoint SGR/model_best.pth.tar --checkpoint SAF/model_best.pth.tar --protocol f30k

      itmatch evaluate --data data/coco_precomp --split testall --protocol coco1k --sims sgr.npy --sims saf.npy

      itmatch evaluate --sims sims_f30k_test.npy --protocol f30k        # a 1,000 × 5,000 matrix needs no --data

      torchrun --nproc_per_node 4 -m itmatch evaluate --device cuda ... (each process scores a share of the
      images on its own GPU; rank 0 writes the report; see docs/scale.md)
    """
    from itmatch.data.folder import data_files, dataset_files
    from itmatch.evaluate import evaluate_split, fold_paths, fold_set_path, sims_files
    from itmatch.fileio import check_outputs, write_json
    from itmatch.protocols import format_table

    if output is None and checkpoint:
        output = default_output(checkpoint, split, protocol)
    folds = {f"--save-sims (fold {k})": f for k, f in enumerate(fold_paths(save_sims))} if save_sims else {}
    check_outputs({"--output": output, "--save-sims": save_sims, **folds,
                   "--save-sims (its fold list)": fold_set_path(save_sims) if save_sims else None},
                  {"--checkpoint": checkpoint, "--sims": [f for path in sims or [] for f in sims_files(path)],
                   "--vocab": vocab, "--data": [*data_files(data, split), *dataset_files(data)] if data else None})
    result = evaluate_split(data, split, checkpoints=checkpoint or [], sims=sims or [], vocab=vocab,
                            protocol=protocol, dev_subset=dev_subset, trust=trust_checkpoint,
                            save_sims_to=save_sims, captions_per_image=captions_per_image, device=device,
                            precision=precision,
                            max_memory=max_memory << 20 if max_memory else None, progress=progress)
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    typer.echo(format_table(result))
    if output is not None:
        write_json(output, result)
        typer.echo(f"wrote {output}")


def default_output(checkpoints: list[Path], split: str, protocol: str | None) -> Path:
    """The result file beside the first checkpoint: ``NAME.SPLIT.PROTOCOL.json``, NAME its file name without the
    model suffix (``vse.v1.pt`` -> ``vse.v1``); an ensemble's NAME adds ``.ensemble-`` and a digest of all its
    files, so that two ensembles (or two versions of one model) never share a result file."""
    first = checkpoints[0]
    name = next((first.name[:-len(s)] for s in MODEL_SUFFIXES if first.name.endswith(s)), first.name)
    if len(checkpoints) > 1:
        members = "\n".join(str(c.resolve()) for c in checkpoints)
        name += ".ensemble-" + hashlib.sha1(members.encode()).hexdigest()[:8]
    return first.with_name(f"{name}.{split}.{protocol or 'full'}.json")


def convert(
    source: Annotated[Path, typer.Argument(help="An SGRAF release (.pth.tar) or any itmatch model file.")],
    target: Annotated[Path, typer.Argument(help="Output file: *.safetensors (native) or *.pth.tar (release).")],
    to: Annotated[str, typer.Option(
        help="native (safetensors + JSON config, no pickle) or release (the SGRAF authors' .pth.tar layout, "
             "for their evaluation.py; SGR and SAF only).")] = "native",
    vocab: Annotated[Optional[Path], typer.Option(help="Vocabulary JSON to store inside the model file.")] = None,
    data_name: Annotated[Optional[str], typer.Option(
        help="--to release: opt.data_name, which picks the authors' vocabulary file (default: f30k_precomp or "
             "coco_precomp from the vocabulary size).")] = None,
    trust_checkpoint: TrustCheckpoint = False,
) -> None:
    """Convert a model file to the native format, or an SGR/SAF model to the authors' release layout.

    Examples:

      itmatch convert runs/f30k_SGR/model_best.pth.tar sgr_f30k.safetensors --vocab f30k_precomp_vocab.json

      itmatch convert runs/sgr/best.pt runs/sgr/model_best.pth.tar --to release
    """
    from itmatch.checkpoint import load_checkpoint, save_model
    from itmatch.data.vocab import load_vocab
    from itmatch.fileio import check_outputs
    from itmatch.release import save_release

    if to not in ("native", "release"):
        raise ItmatchError(f"--to must be native or release, got {to!r}")
    wanted = ".safetensors" if to == "native" else ".pth.tar"
    if not target.name.endswith(wanted):
        raise ItmatchError(f"{target}: --to {to} writes a {wanted} file; name the output *{wanted}")
    check_outputs({"TARGET": target}, {"--vocab": vocab})  # the source itself may be replaced: it is read first
    loaded = load_checkpoint(source, trust=trust_checkpoint)
    if to == "release":
        if vocab is not None:
            raise ItmatchError("--vocab: the release layout holds no vocabulary (the authors' scripts read "
                               "vocab/{data_name}_vocab.json); leave --vocab out")
        info = loaded.info
        save_release(target, loaded.model, epoch=info.get("epoch", 0), best_rsum=info.get("best_rsum", 0.0),
                     eiters=info.get("step", 0), data_name=data_name, training=info.get("config"))
        typer.echo(f"wrote {target} ({loaded.model.model_name} in the authors' layout, from a {loaded.source} file)")
        return
    words = load_vocab(vocab).to_json() if vocab is not None else loaded.vocab
    size = loaded.model.vocab_size
    if words is not None and size is not None and len(words["word2idx"]) != size:
        raise ItmatchError(f"{vocab}: {len(words['word2idx'])} words, but {source} was trained with {size}")
    save_model(target, loaded.model, vocab=words)
    typer.echo(f"wrote {target} ({loaded.model.model_name}, from a {loaded.source} file)")


def models() -> None:
    """List the registered model names."""
    from itmatch.models import list_models

    for name in list_models():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command()(evaluate)
    app.command()(convert)
    app.command("models")(models)
