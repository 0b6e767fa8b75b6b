"""Training through only the scores the loss reads (``itmatch.train.active_pairs``): the loss and gradients of a
step equal those of the whole score matrix recorded with autograd, and only the read pairs are recorded."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from train_support import small_config, sorted_batch

from itmatch.losses import ranking_loss
from itmatch.models import create_model
from itmatch.models.region_word import RegionEncoding
from itmatch.train.objective import TrainingObjective

SIZES = {"vocab_size": 50, "img_dim": 24, "word_dim": 12, "embed_size": 32, "sim_dim": 16, "dropout": 0.4}


def recorded_pairs(model: torch.nn.Module) -> list[int]:
    """Counts, call by call, the pairs that ``model.head_scores`` scores while autograd records."""
    pairs: list[int] = []
    score = model.head_scores

    def counting(images, texts):
        out = score(images, texts)
        if torch.is_grad_enabled():
            pairs.append(out.shape[1] * out.shape[2])
        return out

    model.head_scores = counting
    return pairs


def whole_matrix_step(model: torch.nn.Module, batch, loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and score matrix of the step with every pair recorded (the path of models with coupled pairs)."""
    objective = TrainingObjective(model, loss)
    torch.manual_seed(5)
    heads = objective.scores(batch.features, batch.tokens, batch.lengths)
    heads.retain_grad()
    value = ranking_loss(heads[0].float(), margin=loss.margin, hardest_negative=loss.hardest_negative)
    value.backward()
    return value.detach(), heads


@pytest.mark.parametrize("name,shared,seed", [("sgr", False, 0), ("tshsr", False, 0), ("ave", False, 0),
                                              *((name, True, seed) for name in ("sgr", "tshsr") for seed in range(4))])
def test_step_equals_the_whole_recorded_matrix(name: str, shared: bool, seed: int) -> None:
    """``shared``: every image has two captions in the batch and dropout is off, so each score column holds exact
    ties; the loss must read the tied score that carries the gradient (five of these eight cases lost a hinge
    term's gradient when the re-scored values replaced the first pass's)."""
    torch.manual_seed(seed)
    model = create_model(name, **{**SIZES, "dropout": 0.0 if shared else SIZES["dropout"]}).train()
    twin = copy.deepcopy(model)
    batch = sorted_batch(size=16, seed=seed)
    if shared:
        batch.features[1::2], batch.images[1::2] = batch.features[::2], batch.images[::2]
    loss = small_config("sgr").loss
    assert loss.hardest_negative and model.independent_pair_scores

    pairs = recorded_pairs(model)
    torch.manual_seed(5)  # the same dropout draws in both steps
    value, _ = TrainingObjective(model, loss)(batch.features, batch.tokens, batch.lengths, batch.images, 0, 0)
    value.backward()
    expected, heads = whole_matrix_step(twin, batch, loss)

    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-6) and float(expected) > 1
    read = int((heads.grad != 0).sum())
    assert sum(pairs) == read and read <= 3 * 16  # one call per caption that the loss reads
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    expected_grads = {k: p.grad for k, p in twin.named_parameters() if p.grad is not None}
    assert grads.keys() == expected_grads.keys()
    largest = max(float(g.abs().max()) for g in expected_grads.values())
    for key, grad in expected_grads.items():
        assert float((grads[key] - grad).abs().max()) <= 1e-5 * largest, key
    for (key, a), b in zip(model.named_buffers(), twin.buffers()):  # the visual BatchNorm advanced once alike
        assert torch.equal(a, b), key


def test_a_batch_without_violations_records_one_pair_and_gives_zero_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("sgr", **SIZES).train()
    pairs = recorded_pairs(model)
    loss = dataclasses.replace(small_config("sgr").loss, margin=-5.0)  # every hinge is zero
    batch = sorted_batch(size=8)
    value, _ = TrainingObjective(model, loss)(batch.features, batch.tokens, batch.lengths, batch.images, 0, 0)
    value.backward()
    assert float(value.detach()) == 0 and pairs == [1]
    assert all(float(p.grad.abs().max()) == 0 for p in model.parameters() if p.grad is not None)


def test_models_whose_pairs_share_statistics_record_the_whole_matrix() -> None:
    """SAF's training BatchNorm pools each caption's pairs, so a score the loss does not read still has a
    gradient; joint SGR + SAF has two heads. Both keep the whole recorded matrix."""
    flags = {name: create_model(name, **SIZES).independent_pair_scores
             for name in ("sgr", "saf", "ave", "sgraf_joint", "tshsr", "tshsr_i2t")}
    assert flags == {"sgr": True, "saf": False, "ave": True, "sgraf_joint": False, "tshsr": True,
                     "tshsr_i2t": True}
    torch.manual_seed(0)
    model = create_model("saf", **SIZES).train()
    pairs = recorded_pairs(model)
    batch = sorted_batch(size=16)
    TrainingObjective(model, small_config("saf").loss)(batch.features, batch.tokens, batch.lengths,
                                                        batch.images, 0, 0)
    assert sum(pairs) == 16 * 16


def test_selected_encodings_sum_repeated_items_in_a_fixed_order() -> None:
    """A resumed run must continue to the same weights, so a step must repeat bit for bit: an image read by several
    captions has its gradient summed in a fixed order (``Encoding.select`` takes ``index_select``; advanced
    indexing's backward summed in an order that varied from call to call on two threads)."""
    torch.manual_seed(0)
    regions = torch.randn(16, 36, 32, requires_grad=True)
    rows = torch.randint(0, 16, (48,))
    upstream = torch.randn(48, 36, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(8):
            regions.grad = None
            RegionEncoding(regions=regions, glob=None).select(rows).regions.backward(upstream)
            grads.append(regions.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], later) for later in grads[1:])
    expected = torch.zeros_like(regions).index_add_(0, rows, upstream)
    torch.testing.assert_close(grads[0], expected, rtol=0, atol=1e-5)
