"""Estimated GPU time of a training run and its evaluations, from FLOP counts (no GPU was measured).

Forward FLOPs per image-caption pair of the pair work (attention, similarity vectors, reasoning) and per pair
of the encoders, ~13 words a caption with <start>/<end>, are each model config's own (``pair_mflop``,
``encode_mflop``; the shared terms in ``itmatch.models.flops``). A training step costs three forward
passes (forward + backward) of ``B²`` pairs' pair work plus ``B`` pairs' encoding; an evaluation one forward
pass over every scored pair. Time = FLOPs / ``SUSTAINED_TFLOPS``: ~10 TFLOP/s is about half an A100's fp32
peak — the share of matrix-unit peak the scoring engine reaches on a CPU (BENCHMARKS.md); an H100 is roughly
3× faster, bf16/tf32 (``run.precision``) faster still. Data loading and Python overheads are not counted.
"""

from __future__ import annotations

import math
from typing import Any

from itmatch.errors import ItmatchError
from itmatch.models.registry import model_config
from itmatch.train.config import TrainConfig

SUSTAINED_TFLOPS = 10.0
WORDS = 13  # words of a caption with <start>/<end>
#: Training captions of the SCAN precomp releases.
TRAIN_CAPTIONS = {"f30k": 145_000, "coco": 566_435}
#: (images, captions) of each scored block and the number of blocks: dev = the first 1,000 dev images.
EVAL_BLOCKS = {"dev": (1000, 5000, 1), "f30k": (1000, 5000, 1), "coco1k": (1000, 5000, 5),
               "coco5k": (5000, 25000, 1), "full": (1000, 5000, 1)}


def pair_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of the pair work for one image-caption pair of model ``model`` built with ``args`` (0 for
    embedding models), at the config's sizes and ``WORDS`` words a caption: the config's own ``pair_mflop``."""
    return _config(model, args, "pair_mflop").pair_mflop(WORDS)


def encode_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of encoding one image and a caption of ``WORDS`` tokens: the config's own ``encode_mflop``."""
    return _config(model, args, "encode_mflop").encode_mflop(WORDS)


def _config(model: str, args: dict, count: str) -> Any:
    """The resolved config of ``model``, which must count its FLOPs (``count``)."""
    config = model_config(model, **args)
    if not hasattr(config, count):
        raise ItmatchError(f"no FLOP count for model {model!r}: give its config a {count} method (see "
                           "itmatch/models/flops.py)")
    return config


def train_hours(config: TrainConfig, dataset: str) -> float:
    """Estimated GPU-hours of training ``config`` on ``dataset``, with one dev evaluation per epoch."""
    name, args, batch = config.model.name, config.model.args, config.data.batch_size
    per_epoch = math.ceil(TRAIN_CAPTIONS[dataset] / batch)
    steps = config.schedule.epochs * per_epoch
    if config.run.max_steps:
        steps = min(steps, config.run.max_steps)
    step_mflop = 3 * (batch * batch * pair_mflop(name, args) + batch * encode_mflop(name, args))
    return steps * step_mflop * 1e6 / (SUSTAINED_TFLOPS * 1e12) / 3600 + steps // per_epoch * eval_hours(config, "dev")


def eval_hours(config: TrainConfig, protocol: str) -> float:
    """Estimated GPU-hours of scoring ``protocol``'s blocks with ``config``'s model."""
    name, args = config.model.name, config.model.args
    images, captions, blocks = EVAL_BLOCKS[protocol]
    mflop = blocks * (images * captions * pair_mflop(name, args) + captions * encode_mflop(name, args))
    return mflop * 1e6 / (SUSTAINED_TFLOPS * 1e12) / 3600
