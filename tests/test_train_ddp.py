"""Data parallelism: `torchrun --nproc_per_node 2 -m itmatch train` (gloo, CPU) trains like one process on the
same global batch: hardest negatives over the global batch, global-batch BatchNorm, SAF's per-caption running
statistics over all captions, DDP's gradient averaging undone by the gathers' backward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import checkpoint, run_train, synthetic_data, train_args

from itmatch.checkpoint import load_checkpoint
from itmatch.data import load_split, load_vocab
from itmatch.scoring import score_matrix

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 195 captions in batches of 16: 12 full batches, then 3 pairs split 2 + 1 between the two processes
    return synthetic_data(tmp_path_factory.mktemp("ddp"), train=39, dev=20, test=2)


@pytest.mark.parametrize("model", ["sgr", "saf"])
def test_two_processes_equal_one(data: Path, tmp_path: Path, model: str) -> None:
    extra = ["model.args.dropout=0.0", "schedule.epochs=1"]  # dropout draws differ between process layouts
    run_train(train_args(model, data, tmp_path / "one", *extra))
    done = run_train(train_args(model, data, tmp_path / "two", *extra), launcher=TORCHRUN)
    assert done.stdout.count("trained 13 steps") == 1  # only rank 0 reports
    one, two = checkpoint(tmp_path / "one" / "last.pt"), checkpoint(tmp_path / "two" / "last.pt")
    assert two["world_size"] == 2 and len(two["rng"]) == 2 and one["step"] == two["step"] == 13

    log_one, log_two = (json.loads((tmp_path / run / "log.jsonl").read_text()) for run in ("one", "two"))
    assert log_two["loss"] == pytest.approx(log_one["loss"], rel=1e-5)  # mean of the 13 steps' global losses
    assert log_two["dev"]["rsum"] == pytest.approx(log_one["dev"]["rsum"], abs=1e-6)

    # Weights, where the gradient is real: a parameter whose gradient is zero in exact arithmetic (a bias
    # before a BatchNorm or a softmax) is moved by Adam on float noise alone; Adam's second moment finds them.
    buffers = [k for k in one["state_dict"] if k.rsplit(".", 1)[1] in BUFFERS]
    names = [k for k in one["state_dict"] if k not in buffers]  # parameters, in the optimizer's order
    params = dict(zip(one["optimizer"]["param_groups"][0]["params"], names))
    compared = 0
    for index, state in one["optimizer"]["state"].items():
        key = params[index]
        real = state["exp_avg_sq"] > 1e-14
        compared += int(real.sum())
        assert float(((one["state_dict"][key] - two["state_dict"][key]) * real).abs().max()) <= 1e-5, key
    assert compared > sum(one["state_dict"][k].numel() for k in names) / 2
    for key in buffers:  # BatchNorm statistics, visual and SAF's per-caption: the same updates in both
        # a running mean also follows the bias before its BatchNorm, one of the noise-driven parameters above,
        # which Adam moves by at most lr per step
        tolerance = one["step"] * 2e-4 if key.endswith("running_mean") else 1e-5
        assert float((one["state_dict"][key].double() - two["state_dict"][key].double()).abs().max()) <= tolerance
    split = load_split(data, "dev")  # the two models score alike
    tokens = load_vocab(data / "vocab.json").encode_all(split.captions)
    features = split.image_features(np.arange(split.n_images))
    one_sims, two_sims = (score_matrix(load_checkpoint(tmp_path / run / "last.pt").model, features, tokens)
                          for run in ("one", "two"))
    assert float(np.abs(one_sims - two_sims).max()) <= 1e-5
    if model == "saf":
        assert int(one["state_dict"]["sim_enc.SAF_module.bn.num_batches_tracked"]) == 195
    assert torch.equal(one["state_dict"]["sim_enc.v_global_w.embedding_local.1.num_batches_tracked"],
                       torch.tensor(13))
