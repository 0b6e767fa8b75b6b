"""The hand-written CPU training GRU (itmatch.models.recurrent) against ``nn.GRU`` over packed sequences: the same
outputs and the same gradients of the inputs and of every weight, float64, either direction, unsorted lengths."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmatch.models.encoders import GRUTextEncoder
from itmatch.models.recurrent import padded_gru


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("lengths", [[3, 6, 1, 4, 6], [5, 5, 2]])  # unsorted with ties / sorted
def test_padded_gru_equals_nn_gru_values_and_gradients(bidirectional, lengths):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7, batch_first=True, bidirectional=bidirectional).double()
    inputs = torch.randn(len(lengths), max(lengths), 5, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(inputs, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    got = padded_gru(gru, packed)
    upstream = torch.randn_like(expected)
    params = [inputs, *gru.parameters()]
    expected_grads = torch.autograd.grad((expected * upstream).sum(), params, retain_graph=True)
    grads = torch.autograd.grad((got * upstream).sum(), params)
    assert got.shape == expected.shape == (len(lengths), max(lengths), 7 * (1 + bidirectional))
    short = lengths.index(min(lengths))
    assert float(expected.detach().abs().max()) > 0.1 and not got.detach()[short, lengths[short]:].any()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for name, grad, want in zip(["inputs", *dict(gru.named_parameters())], grads, expected_grads):
        assert float(want.abs().max()) > 1e-3, name
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-10, msg=name)


def test_text_encoder_trains_through_it_and_scores_through_nn_gru():
    """With gradient recording on a CPU the encoder takes the hand-written GRU, without it ``nn.GRU``: the same
    word features (float32)."""
    torch.manual_seed(0)
    encoder = GRUTextEncoder(20, 6, 8, dropout=0.0)
    tokens, lengths = torch.randint(1, 20, (4, 5)), torch.tensor([2, 5, 3, 5])
    trained = encoder(tokens, lengths)
    assert "GRURecurrenceBackward" in _graph_names(trained)
    with torch.no_grad():
        scored = encoder(tokens, lengths)
    torch.testing.assert_close(trained.detach(), scored, rtol=0, atol=1e-6)


def _graph_names(tensor: torch.Tensor) -> list[str]:
    """Names of the autograd nodes behind ``tensor``."""
    seen, stack, names = set(), [tensor.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names
