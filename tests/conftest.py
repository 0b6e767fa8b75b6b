"""Shared fixtures: small random SGR/SAF models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from itmatch.models import create_model  # noqa: E402

SMALL = dict(vocab_size=50, img_dim=24, word_dim=12, embed_size=32, sim_dim=16, num_regions=36)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm random affine weights and running statistics (so eval BN is not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def sharpen(model: torch.nn.Module, scores: torch.Tensor) -> torch.nn.Module:
    """Re-centre and scale the read-out ``sim_enc.sim_eval_w`` so that ``scores`` (the model's reference scores on
    the test's inputs) would spread over (0, 1) instead of sitting in the flat middle of the sigmoid (random
    weights give logits within a few hundredths of each other)."""
    logits = torch.logit(scores.double())
    layer = model.sim_enc.sim_eval_w
    scale = 3.0 / float(logits.std())
    with torch.no_grad():
        centre = float(logits.mean()) - float(layer.bias)
        layer.weight.mul_(scale)
        layer.bias.fill_(-scale * centre)
    return model


def small_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A small random ``name`` model in eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, **{**SMALL, **overrides})
    randomize_batchnorm(model, seed)
    return model.eval()


@pytest.fixture(params=["sgr", "saf"])
def sgraf_model(request):
    return small_model(request.param)
