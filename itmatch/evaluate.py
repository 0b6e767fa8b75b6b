"""Evaluation of models or saved score matrices on a precomp split under the papers' protocols.

The protocol decides which image × caption blocks are scored (one block, or the five 1K folds of COCO), so
COCO-1K never computes the full 5,000 × 25,000 matrix. Results are the JSON of ``itmatch.protocols``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from itmatch.data.precomp import ImageRows, PrecompSplit, load_split
from itmatch.data.vocab import Vocabulary
from itmatch.distributed import DistInfo, setup
from itmatch.errors import ItmatchError, listed
from itmatch.fileio import atomic_path, write_json
from itmatch.loading import caption_tokens, load_models
from itmatch.models.base import Matcher
from itmatch.models.ensemble import member_mean
from itmatch.protocols import CAPTIONS_PER_IMAGE, MAX_FOLDS, check_protocol, evaluate_blocks, protocol_blocks
from itmatch.scoring import score_matrix


#: Captions per tile for embedding models: one (images × 1,024) matrix product instead of many thin ones.
EMBEDDING_CAPTION_CHUNK = 1024


def score_blocks(model: Matcher, vocab: Vocabulary | None, split: PrecompSplit,
                 blocks: list[tuple[np.ndarray, np.ndarray]], **engine) -> list[np.ndarray]:
    """Score matrices of ``blocks`` (image indices, caption indices) of ``split`` with the scoring engine.

    An ensemble that mixes embedding models with others, or whose members read captions differently (a
    vocabulary, or a model's own tokenizer), is scored member by member, each with its own token ids and
    tiles, and the members' scores averaged. Embedding models take ``EMBEDDING_CAPTION_CHUNK`` captions per
    matrix product unless ``caption_chunk`` is given.
    """
    members = model.member_models()
    needed = np.unique(np.concatenate([captions for _, captions in blocks])) if blocks else np.zeros(0, np.int64)
    row = np.zeros(split.n_captions, dtype=np.int64)
    row[needed] = np.arange(len(needed))  # only the blocks' captions are tokenized
    texts = [split.captions[c] for c in needed]

    def scores_of(matcher: Matcher) -> list[np.ndarray]:
        tokens = caption_tokens(matcher, vocab, texts)
        options = _engine_options(matcher, engine)
        return [score_matrix(matcher, ImageRows(split, images), [tokens[c] for c in row[captions]], **options)
                for images, captions in blocks]

    if len(members) == 1 or all(m.tokenize is None and not m.is_embedding for m in members):
        return scores_of(model)  # one set of token ids and tiles: score_matrix averages the members
    return member_mean(map(scores_of, members))


def _engine_options(model: Matcher, engine: dict) -> dict:
    """``engine`` with large caption tiles for a model scored by one matrix product (no per-pair work)."""
    if model.pair_bytes_per_word() == 0 and not engine.get("caption_chunk"):
        return {**engine, "caption_chunk": EMBEDDING_CAPTION_CHUNK}
    return engine


def load_sims(paths: Sequence[str | Path], blocks: list[tuple[np.ndarray, np.ndarray]],
              n_images: int, n_captions: int) -> list[np.ndarray]:
    """Saved score matrices, averaged: each path is a full (images × captions) ``.npy`` of the split, or —
    for a protocol with folds — a stem whose ``STEM.fold{k}.npy`` files hold the folds' blocks."""
    return member_mean(_sims_parts(Path(path), blocks, n_images, n_captions) for path in paths)


def _sims_parts(path: Path, blocks, n_images: int, n_captions: int) -> list[np.ndarray]:
    folds = _fold_files(path)
    if not path.exists() and len(blocks) > 1 and len(folds) >= len(blocks):
        parts = [np.load(f, mmap_mode="r") for f in folds[:len(blocks)]]
        _check_fold_set(path, folds[:len(blocks)], parts)
        for f, part, (imgs, caps) in zip(folds, parts, blocks):
            if part.shape != (len(imgs), len(caps)):
                raise ItmatchError(f"{f}: shape {part.shape}, expected {(len(imgs), len(caps))}")
        return parts
    sims = _open_sims(path)
    if sims.shape != (n_images, n_captions):
        raise ItmatchError(f"{path}: shape {sims.shape}, but the split has {n_images} images × {n_captions} "
                           "captions; save it with --save-sims on the same split")
    return [np.asarray(sims[np.ix_(imgs, caps)]) for imgs, caps in blocks]


def _fold_files(path: Path) -> list[Path]:
    """``STEM.fold0.npy``, ``STEM.fold1.npy``, ... as far as they exist (``save_sims``'s files of a protocol with
    folds)."""
    folds = []
    while fold_path(path, len(folds)).exists():
        folds.append(fold_path(path, len(folds)))
    return folds


def fold_path(path: Path, fold: int) -> Path:
    """The file of fold ``fold`` of the score matrices ``path``: ``STEM.fold{k}.npy``, STEM the name without its
    ``.npy`` (only that ending: ``sims.sgr`` and ``sims.saf`` keep apart)."""
    return path.with_name(f"{_stem(path)}.fold{fold}.npy")


def fold_set_path(path: str | Path) -> Path:
    """``STEM.folds.json`` beside the fold files of ``path``: the digest of each fold file of the set that
    ``save_sims`` wrote last (``_check_fold_set``)."""
    path = Path(path)
    return path.with_name(f"{_stem(path)}.folds.json")


def _stem(path: Path) -> str:
    return path.name[:-len(".npy")] if path.name.endswith(".npy") else path.name


def fold_paths(path: str | Path) -> list[Path]:
    """Every fold file of the stem ``path`` a protocol may have (``fold_path`` of each of ``MAX_FOLDS``)."""
    return [fold_path(Path(path), k) for k in range(MAX_FOLDS)]


def sims_files(path: str | Path) -> list[Path]:
    """Every file ``--sims path`` may read: the matrix ``path``, or the fold files of the stem ``path`` and their
    ``fold_set_path``."""
    return [Path(path), *fold_paths(path), fold_set_path(path)]


def _digest(array: np.ndarray) -> str:
    """A digest of ``array``'s dtype, shape and values (reads a memory-mapped array once)."""
    data = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())  # SHA-256: the CPU's SHA instructions
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def _check_fold_set(path: Path, folds: list[Path], parts: list[np.ndarray]) -> None:
    """Refuse fold files ``folds`` (arrays ``parts``) of the stem ``path`` that are not the set its
    ``fold_set_path`` lists: a save killed while it replaced the files one by one, or one file replaced since,
    would otherwise be evaluated as a mix of two models' scores. Fold files without that list (written by other
    tools) are read as they are."""
    listing = fold_set_path(path)
    if not listing.exists():
        return
    try:
        wanted = {entry["file"]: entry["digest"] for entry in json.loads(listing.read_text())["folds"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ItmatchError(f"{listing}: not a fold list written by --save-sims ({exc}); delete it to read the "
                           "fold files as they are") from None
    for fold, part in zip(folds, parts):
        if wanted.get(fold.name) != _digest(part):
            raise ItmatchError(f"{fold}: not the fold file that {listing.name} lists (another save wrote it, or a "
                               "save was stopped before it had replaced every fold file); save the scores again "
                               f"with --save-sims, or delete {listing} to read the files as they are")


def _open_sims(path: Path) -> np.ndarray:
    """A saved score matrix, memory-mapped, with a one-line error when it is missing or not a 2-D ``.npy``."""
    if not path.exists():
        raise ItmatchError(f"{path}: no such score matrix (.npy of shape images × captions)")
    if path.is_dir():
        raise ItmatchError(f"{path}: is a folder; give --sims a .npy score matrix (images × captions)")
    try:
        sims = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ItmatchError(f"{path}: not a .npy score matrix ({exc})") from None
    if not isinstance(sims, np.ndarray):  # an .npz archive
        raise ItmatchError(f"{path}: an .npz archive; give --sims one .npy score matrix (np.save)")
    if sims.ndim != 2 or sims.dtype.kind not in "fiu":
        raise ItmatchError(f"{path}: {sims.dtype} of shape {sims.shape}; a score matrix is 2-D real numbers "
                           "(images × captions)")
    return sims


def sims_caption_image(path: str | Path, captions_per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    """The caption → image layout of a saved score matrix evaluated without its dataset: image i owns captions
    ``k·i … k·i + k − 1`` (the authors' layout, k = 5), so an n × kn matrix (or its ``STEM.fold{j}.npy`` files)
    says everything. Another shape is an error that names ``--captions-per-image`` and ``--data``."""
    path = Path(path)
    if captions_per_image < 1:
        raise ItmatchError(f"--captions-per-image must be >= 1, got {captions_per_image}")
    folds = [] if path.exists() else _fold_files(path)
    shapes = [_open_sims(f).shape for f in folds or [path]]
    n_images, n_captions = sum(s[0] for s in shapes), sum(s[1] for s in shapes)
    if n_captions != n_images * captions_per_image:
        raise ItmatchError(f"{path}: {n_images} images × {n_captions} captions is not {captions_per_image} captions "
                           "per image in image order; pass --captions-per-image K, or --data DIR (with --split) "
                           "for the split's own layout")
    return np.arange(n_captions, dtype=np.int64) // captions_per_image


def check_scores(block_sims: list[np.ndarray], blocks: list[tuple[np.ndarray, np.ndarray]],
                 sims: Sequence[str | Path] = ()) -> None:
    """Refuse NaN scores (they cannot be ranked), naming their cause: the saved score files ``sims``, else the
    model (features holding NaN are refused when read: ``PrecompSplit.image_features``)."""
    bad = sorted({int(i) for (imgs, _), part in zip(blocks, block_sims)
                  for i in np.asarray(imgs)[np.isnan(part).any(axis=1)]})
    if not bad:
        return
    where = ", ".join(map(str, sims)) if sims else "the model"
    raise ItmatchError(f"{where}: scores of images {listed(bad)} are NaN; "
                       + ("save them again" if sims else "the checkpoint's weights may be broken"))


def save_sims(path: str | Path, blocks_sims: list[np.ndarray]) -> list[Path]:
    """Write the scored blocks: one ``.npy`` for a single block, ``STEM.fold{k}.npy`` for folds. The folds are
    written as one set: all under temporary names first, so that a failure leaves the earlier set whole; then
    their digests (``fold_set_path``), then the files are renamed one after the other. A kill between two renames
    leaves files that do not match the digests, which ``--sims`` then refuses instead of mixing two sets."""
    path = Path(path)
    arrays = [sims.astype(np.float32, copy=False) for sims in blocks_sims]  # no copy of float32 scores
    targets = [path] if len(arrays) == 1 else [fold_path(path, k) for k in range(len(arrays))]
    with contextlib.ExitStack() as stack:
        for target, sims in zip(targets, arrays):
            with open(stack.enter_context(atomic_path(target)), "wb") as f:
                np.save(f, sims)
        if len(arrays) > 1:
            write_json(fold_set_path(path), {"folds": [{"file": target.name, "digest": _digest(sims)}
                                                       for target, sims in zip(targets, arrays)]})
    return targets


def image_shares(blocks: list[tuple[np.ndarray, np.ndarray]], world_size: int
                 ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per process, its part of every block: the blocks' image rows, laid end to end, cut into ``world_size``
    consecutive near-equal shares. Equal work per process, and a process meets few blocks (COCO-1K's five
    folds over two processes: 2.5 folds each), so it reads and tokenizes only those blocks' captions."""
    sizes = np.array([len(images) for images, _ in blocks])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cuts = np.linspace(0, starts[-1], world_size + 1).round().astype(np.int64)
    return [[(images[np.clip(lo - start, 0, len(images)):np.clip(hi - start, 0, len(images))], captions)
             for (images, captions), start in zip(blocks, starts)] for lo, hi in zip(cuts[:-1], cuts[1:])]


def score_blocks_sharded(model: Matcher, vocab: Vocabulary | None, split: PrecompSplit,
                         blocks: list[tuple[np.ndarray, np.ndarray]], info: DistInfo, **engine
                         ) -> list[np.ndarray] | None:
    """``score_blocks`` with the blocks' images shared out by ``image_shares``, one share per process; the rows
    are gathered on rank 0, which gets the blocks' full matrices (other ranks: None).

    A process scores its images against all their block's captions, so every score is computed as in one process.
    """
    shares = image_shares(blocks, info.world_size)[info.rank]
    scored = iter(score_blocks(model, vocab, split, [b for b in shares if len(b[0])], **engine))
    mine = [next(scored) if len(images) else np.zeros((0, len(captions)), np.float32) for images, captions in shares]
    gathered = [info.gather_to_main(rows) for rows in mine]
    return gathered if info.is_main else None  # type: ignore[return-value]


def evaluate_split(data: str | Path | None, split: str, *, checkpoints: Sequence[str | Path] = (),
                   sims: Sequence[str | Path] = (), vocab: str | Path | None = None, protocol: str | None = None,
                   dev_subset: bool = False, trust: bool = False, save_sims_to: str | Path | None = None,
                   captions_per_image: int | None = None, **engine) -> dict | None:
    """Evaluate checkpoints (an ensemble when several) or saved score matrices on ``data``/``split``.

    Saved matrices need no ``data`` when captions come in image order, ``captions_per_image`` (default 5) per
    image (``sims_caption_image``); the result then has no ``split``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process scores a share of each block's images
    (``score_blocks_sharded``) and rank 0 alone evaluates, saves the score matrices and returns the result;
    the other ranks return None. ``engine["device"]`` ``cuda`` means each process's own GPU (``LOCAL_RANK``).
    """
    if bool(checkpoints) == bool(sims):
        raise ItmatchError("give either --checkpoint (one or more) or --sims (one or more), not both or neither")
    split_data = None
    if data is None:
        if checkpoints:
            raise ItmatchError("scoring a model needs the split's features and captions: pass --data DIR")
        caption_image = sims_caption_image(sims[0], captions_per_image or CAPTIONS_PER_IMAGE)
        n_images = len(caption_image) // (captions_per_image or CAPTIONS_PER_IMAGE)
    elif captions_per_image is not None:
        raise ItmatchError("--captions-per-image describes score matrices read without --data; with --data the "
                           "split says which image each caption belongs to")
    else:
        split_data = load_split(data, split, dev_subset=dev_subset)
        caption_image, n_images = split_data.caption_image, split_data.n_images
    n_captions = len(caption_image)
    check_protocol(protocol, n_images, caption_image)
    blocks = protocol_blocks(protocol, caption_image)
    device = engine.get("device")
    info = setup("auto" if device is None else str(device))  # None: a GPU when there is one
    try:
        if checkpoints:
            engine = {**engine, "device": info.device, "progress": bool(engine.get("progress")) and info.is_main}
            model, words = load_models(checkpoints, vocab, trust=trust, device=str(info.device))
            block_sims = score_blocks_sharded(model, words, split_data, blocks, info, **engine)
        else:
            block_sims = load_sims(sims, blocks, n_images, n_captions) if info.is_main else None
    finally:
        info.close()
    if block_sims is None:
        return None
    check_scores(block_sims, blocks, sims)
    result = evaluate_blocks(protocol, caption_image, block_sims)
    if save_sims_to is not None:  # only scores that could be evaluated are saved
        save_sims(save_sims_to, block_sims)
    if split_data is not None:
        result["split"] = split
    result["sources"] = [str(p) for p in (checkpoints or sims)]
    return result
