"""Estimated GPU time of a training run and its evaluations, from FLOP counts (no GPU was measured).

Forward FLOPs per image-caption pair of the pair work (attention, similarity vectors, reasoning) and per pair
of the encoders, at the papers' sizes (d 1024, similarity 256, 36 regions, ~13 words with <start>/<end>):
similarity vectors cost ``2 d k`` per node, a graph step about ``3 · 2 k²`` per node (SGR) or ``2 · 2 k²`` (HSR,
two folded products), SCAN attention about 2 MFLOP; a Bi-GRU caption about 230 MFLOP, the region projection
150, HREM's fragment transformer layers about 630 and BERT-base about 2,800. A training step costs three forward
passes (forward + backward) of ``B²`` pairs' pair work plus ``B`` pairs' encoding; an evaluation one forward
pass over every scored pair. Time = FLOPs / ``SUSTAINED_TFLOPS``: ~10 TFLOP/s is about half an A100's fp32
peak — the share of matrix-unit peak the scoring engine reaches on a CPU (BENCHMARKS.md); an H100 is roughly
3× faster, bf16/tf32 (``run.precision``) faster still. Data loading and Python overheads are not counted.
"""

from __future__ import annotations

import math

from itmatch.errors import ItmatchError
from itmatch.models.hrem import HREMConfig
from itmatch.models.registry import model_config
from itmatch.models.sgraf import SGRAFConfig
from itmatch.models.tshsr import TSHSRConfig
from itmatch.models.vse import VSEConfig
from itmatch.train.config import TrainConfig

SUSTAINED_TFLOPS = 10.0
WORDS = 13  # words of a caption with <start>/<end>
#: Training captions of the SCAN precomp releases.
TRAIN_CAPTIONS = {"f30k": 145_000, "coco": 566_435}
#: (images, captions) of each scored block and the number of blocks: dev = the first 1,000 dev images.
EVAL_BLOCKS = {"dev": (1000, 5000, 1), "f30k": (1000, 5000, 1), "coco1k": (1000, 5000, 5),
               "coco5k": (5000, 25000, 1), "full": (1000, 5000, 1)}
ENCODE_MFLOP = {"bigru": 380.0, "bert": 2950.0}
FRAGMENT_MFLOP = 630.0


def pair_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of the pair work for one image-caption pair of model ``model`` built with ``args`` (0 for
    embedding models), at the config's sizes (``WORDS`` words a caption)."""
    config = model_config(model, **args)
    if isinstance(config, VSEConfig):  # VSE, HREM: one dot product a pair
        return 0.0
    regions, dim, sim = config.num_regions, config.embed_size, config.sim_dim
    project = 2 * dim * sim / 1e6
    if isinstance(config, TSHSRConfig):
        hsr_step = 2 * 2 * sim * sim / 1e6
        i2t = 2 + (WORDS + 1) * (project + config.hsr_layers * hsr_step) if config.uses_i2t else 0.0
        t2i_steps = config.hsr_layers * hsr_step if config.t2i_hsr else 0.0
        return i2t + (2 + (regions + 1) * (project + t2i_steps) if config.uses_t2i else 0.0)
    if isinstance(config, SGRAFConfig):
        nodes = (WORDS if config.attention == "t2i" else regions) + int(config.global_node)
        steps = config.sgr_step if "SGR" in config.heads else 0
        return 2 + nodes * (project + steps * 3 * 2 * sim * sim / 1e6)
    raise ItmatchError(f"no FLOP count for model {model!r}: add its pair work to itmatch/papers/cost.py")


def encode_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of encoding one image and one caption."""
    config = model_config(model, **args)
    text = "bert" if getattr(config, "text_encoder", "bigru") == "bert" else "bigru"
    return ENCODE_MFLOP[text] + (FRAGMENT_MFLOP if isinstance(config, HREMConfig) else 0.0)


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
