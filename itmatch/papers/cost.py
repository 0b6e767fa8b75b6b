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

from itmatch.train.config import TrainConfig

SUSTAINED_TFLOPS = 10.0
WORDS, REGIONS, DIM, SIM = 13, 36, 1024, 256
#: Training captions of the SCAN precomp releases.
TRAIN_CAPTIONS = {"f30k": 145_000, "coco": 566_435}
#: (images, captions) of each scored block and the number of blocks: dev = the first 1,000 dev images.
EVAL_BLOCKS = {"dev": (1000, 5000, 1), "f30k": (1000, 5000, 1), "coco1k": (1000, 5000, 5),
               "coco5k": (5000, 25000, 1), "full": (1000, 5000, 1)}
ENCODE_MFLOP = {"bigru": 380.0, "bert": 2950.0}
FRAGMENT_MFLOP = 630.0


def _nodes(args: dict, per_word: bool = True) -> int:
    return (WORDS if per_word else REGIONS) + int(args.get("global_node", True))


def pair_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of the pair work for one image-caption pair (0 for embedding models)."""
    if model in ("vse", "hrem"):
        return 0.0
    project = 2 * DIM * SIM / 1e6
    if model == "tshsr":
        layers, streams = args.get("hsr_layers", 3), args.get("streams", "both")
        hsr_step = 2 * 2 * SIM * SIM / 1e6
        i2t = 2 + (WORDS + 1) * (project + layers * hsr_step)
        t2i = 2 + (REGIONS + 1) * (project + (layers * hsr_step if args.get("t2i_hsr") else 0.0))
        return {"both": i2t + t2i, "i2t": i2t, "t2i": t2i}[streams]
    nodes = _nodes(args, args.get("attention", "t2i") == "t2i")
    steps = args.get("sgr_step", 3) if model in ("sgr", "sgraf_joint") else 0
    return 2 + nodes * (project + steps * 3 * 2 * SIM * SIM / 1e6)


def encode_mflop(model: str, args: dict) -> float:
    """Forward MFLOP of encoding one image and one caption."""
    text = "bert" if args.get("text_encoder") == "bert" else "bigru"
    relation = FRAGMENT_MFLOP if model == "hrem" else 0.0
    return ENCODE_MFLOP[text] + relation


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
