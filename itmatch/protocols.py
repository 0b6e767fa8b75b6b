"""The papers' evaluation protocols: which image x caption blocks are scored and how their metrics combine.

- ``f30k``: Flickr30K 1K test, 1,000 images x 5,000 captions scored at once.
- ``coco1k``: MS-COCO 5K test split into 5 consecutive folds of 1,000 images and their 5,000 captions; every
  number (recalls, medr, meanr, rsum) is the mean over the folds, which are also reported under ``"folds"``.
- ``coco5k``: MS-COCO 5K test, 5,000 images x 25,000 captions scored at once.
- ``full`` (or ``None``): the whole split at once, any number of images and captions per image.

The caller scores only ``protocol_blocks(...)`` (COCO-1K never needs the full 5,000 x 25,000 matrix) and passes
the score matrices to ``evaluate_blocks``, which returns the result JSON.
"""

from __future__ import annotations

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.metrics import check_caption_image, retrieval_metrics

PROTOCOLS: tuple[str, ...] = ("f30k", "coco1k", "coco5k", "full")

CAPTIONS_PER_IMAGE = 5
_LAYOUTS = {"f30k": (1000, 1), "coco1k": (5000, 5), "coco5k": (5000, 1)}
"""(images, folds) of the fixed-size protocols; each image has ``CAPTIONS_PER_IMAGE`` captions in image order."""
#: The most blocks a protocol scores (COCO-1K's five folds): how many fold files a saved set may have.
MAX_FOLDS = max(folds for _, folds in _LAYOUTS.values())

Block = tuple[np.ndarray, np.ndarray]


def check_protocol(name: str | None, n_images: int, caption_image: np.ndarray) -> str:
    """Check that the data fits protocol ``name`` (``None`` means ``full``); return the protocol's name."""
    protocol = "full" if name is None else name
    if protocol not in PROTOCOLS:
        raise ItmatchError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)} "
                           "(or omit --protocol to score the whole split)")
    cap = check_caption_image(caption_image, n_images)
    if protocol == "full":
        return protocol
    expected, _ = _LAYOUTS[protocol]
    if n_images != expected or not np.array_equal(cap, np.arange(expected * CAPTIONS_PER_IMAGE)
                                                  // CAPTIONS_PER_IMAGE):
        raise ItmatchError(f"protocol {protocol} needs {expected} test images with {CAPTIONS_PER_IMAGE} captions "
                           f"each in image order, got {n_images} images and {len(cap)} captions; omit --protocol "
                           "to score the whole split")
    return protocol


def protocol_blocks(name: str | None, caption_image: np.ndarray) -> list[Block]:
    """The ``(image indices, caption indices)`` blocks protocol ``name`` scores: one, or five for ``coco1k``.

    The images are those ``caption_image`` refers to (0 .. max); every one of them must have a caption.
    """
    cap = np.asarray(caption_image)
    return _blocks(check_protocol(name, _n_images(cap), cap), _n_images(cap), len(cap))


def evaluate_blocks(name: str | None, caption_image: np.ndarray, block_sims: list[np.ndarray]) -> dict:
    """The result JSON of protocol ``name`` from the score matrices of ``protocol_blocks(name, caption_image)``.

    Keys: ``protocol``, ``n_images``, ``n_captions``, ``i2t`` and ``t2i`` (``r1 r5 r10 medr meanr``), ``rsum``,
    and for ``coco1k`` ``folds`` (per fold ``n_images n_captions i2t t2i rsum``; the top level is their mean).
    """
    cap = np.asarray(caption_image)
    protocol = check_protocol(name, _n_images(cap), cap)
    blocks = _blocks(protocol, _n_images(cap), len(cap))
    if len(block_sims) != len(blocks):
        raise ItmatchError(f"protocol {protocol} scores {len(blocks)} block(s) but {len(block_sims)} score "
                           "matrices were given")
    folds = [_evaluate_block(images, captions, sims, cap) for (images, captions), sims in zip(blocks, block_sims)]
    result = {"protocol": protocol, "n_images": _n_images(cap), "n_captions": len(cap), **_mean_metrics(folds)}
    if len(folds) > 1:
        result["folds"] = folds
    return result


def format_table(result: dict) -> str:
    """A fixed-width table of a result of ``evaluate_blocks``: one row per direction, then rsum."""
    folds = f", mean of {len(result['folds'])} folds" if "folds" in result else ""
    split = f"{result['split']}: " if "split" in result else ""
    lines = [f"protocol {result['protocol']} ({split}{result['n_images']} images, {result['n_captions']} "
             f"captions{folds})",
             f"{'':<12}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>8}{'meanr':>8}"]
    for key, label in (("i2t", "image->text"), ("t2i", "text->image")):
        row = result[key]
        lines.append(f"{label:<12}{row['r1']:>7.1f}{row['r5']:>7.1f}{row['r10']:>7.1f}"
                     f"{row['medr']:>8.1f}{row['meanr']:>8.1f}")
    lines.append(f"{'rsum':<12}{result['rsum']:>7.1f}")
    return "\n".join(lines)


def _n_images(caption_image: np.ndarray) -> int:
    """Number of images ``caption_image`` refers to (0 when it is empty)."""
    return int(np.max(caption_image)) + 1 if len(caption_image) else 0


def _blocks(protocol: str, n_images: int, n_captions: int) -> list[Block]:
    """Consecutive folds of a checked layout: ``coco1k`` has five, every other protocol one."""
    n_folds = _LAYOUTS[protocol][1] if protocol in _LAYOUTS else 1
    images = np.array_split(np.arange(n_images, dtype=np.int64), n_folds)
    captions = np.array_split(np.arange(n_captions, dtype=np.int64), n_folds)
    return list(zip(images, captions))


def _evaluate_block(images: np.ndarray, captions: np.ndarray, sims: np.ndarray, caption_image: np.ndarray) -> dict:
    """Metrics of one block, its captions' image indices re-based to the block's own images."""
    if tuple(sims.shape) != (len(images), len(captions)):
        raise ItmatchError(f"a score matrix has shape {tuple(sims.shape)}, expected {len(images)} images x "
                           f"{len(captions)} captions")
    local = np.searchsorted(images, caption_image[captions])
    return {"n_images": len(images), "n_captions": len(captions), **retrieval_metrics(sims, local)}


def _mean_metrics(folds: list[dict]) -> dict:
    """``i2t``, ``t2i`` and ``rsum``, each number the mean over ``folds`` (one fold: its own numbers)."""
    mean = {key: {name: float(np.mean([fold[key][name] for fold in folds])) for name in folds[0][key]}
            for key in ("i2t", "t2i")}
    mean["rsum"] = float(np.mean([fold["rsum"] for fold in folds]))
    return mean
