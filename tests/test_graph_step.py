"""SGR's training step (``GraphStep``, a hand-written backward pass) against the literal released step under
autograd: the same node updates and the same gradients of the nodes and of every weight, float64."""

from __future__ import annotations

import pytest
import torch

from itmatch.models import layers
from itmatch.models.sgraf import GraphReasoning


@pytest.mark.parametrize("chunk_rows", [512, 12])  # one chunk / chunks of 2 pairs (the last one of 1)
def test_graph_step_equals_the_literal_step_values_and_gradients(monkeypatch, chunk_rows):
    monkeypatch.setattr(layers, "NODE_CHUNK_ROWS", chunk_rows)
    torch.manual_seed(0)
    step = GraphReasoning(8).double()
    with torch.no_grad():  # non-zero biases, so that every term of the folded form is exercised
        for param in step.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    nodes = torch.randn(5, 6, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 1, 0]]).bool()
    upstream = torch.randn(5, 6, 8, dtype=torch.float64)
    params = [nodes] + [p for p in step.parameters() if p.requires_grad]

    got = step(nodes, mask)
    assert type(got.grad_fn).__name__ == "GraphStepBackward"
    grads = torch.autograd.grad((got * upstream).sum(), params)
    logits = step.graph_query_w(nodes) @ step.graph_key_w(nodes).transpose(1, 2)
    edges = torch.softmax(logits.masked_fill(~mask[:, None, :], float("-inf")), 2)
    expected = torch.relu(step.sim_graph_w(edges @ nodes))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), params)

    assert 0 < float((expected == 0).double().mean()) < 1  # the ReLU clips some entries
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for grad, want in zip(grads, expected_grads):
        assert float(want.abs().max()) > 1e-2
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-10)
