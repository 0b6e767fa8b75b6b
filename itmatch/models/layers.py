"""Small numeric building blocks shared by the models, written as the SGRAF authors compute them."""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Hashable, Iterable, Iterator, TypeVar

import torch
from torch import nn

T = TypeVar("T")

#: Nodes per chunk of a reasoning step (SGR's graph steps while scoring, a chunk through all of them, and in
#: training; TSHSR's HSR layer while scoring): a chunk's queries and values (2 KiB per node at sim_dim 256), and in
#: training their gradients, stay in the caches; measured ~20 % faster than one product over a whole tile's nodes
#: (one thread), SGR's training step (forward and backward) too. Counted in nodes of ``NODE_WIDTH`` values: scoring
#: sizes its chunks by values, so narrower nodes go through in fewer, larger chunks (at the demo's sim_dim of 64 a
#: search query's 100 pairs in one chunk instead of three: about 3 % of a search's time, in fewer operations);
#: training keeps this many nodes a chunk whatever their width (its tuned size, and the demo's runs unchanged).
NODE_CHUNK_ROWS = 512
NODE_WIDTH = 256


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """``x / (||x||_2 + eps)`` along ``dim`` (the epsilon is added to the norm, as in the authors' code)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def l2norm_(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """:func:`l2norm` in place (no gradient): scoring's large blocks are normalised without a copy."""
    return x.div_(x.norm(dim=dim, keepdim=True).add_(eps))


def l1norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """``x / (sum |x| + eps)`` along ``dim``."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def xavier_init_(module: nn.Module) -> None:
    """The authors' init: Linear weights uniform in ±sqrt(6 / (fan_in + fan_out)), biases 0; BatchNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            r = math.sqrt(6.0) / math.sqrt(m.in_features + m.out_features)
            with torch.no_grad():
                m.weight.uniform_(-r, r)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Bool (B, width): True at positions ``< lengths[b]``."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def batchnorm_eval(x: torch.Tensor, bn: nn.BatchNorm1d, channel_dim: int) -> torch.Tensor:
    """``bn`` applied with its running statistics, channels on ``channel_dim`` of ``x`` (any rank)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    return (x - bn.running_mean.view(shape)) * scale + bn.bias.view(shape)


def cached_on(owner: object, name: str, tensors: Iterable[torch.Tensor], compute: Callable[[], T],
              extra: Hashable = None) -> T:
    """``compute()``, kept on ``owner`` (attribute ``name``) and reused while every one of ``tensors`` keeps its
    storage and version and ``extra`` stays equal. The owner holds the tensors, so their storage cannot be freed
    and reused under the cache. Inference tensors carry no version counter: for them nothing is cached."""
    tensors = list(tensors)
    if any(t.is_inference() for t in tensors):
        return compute()
    key = (tuple((t.data_ptr(), t._version) for t in tensors), extra)
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, compute())
        owner.__dict__[name] = cached
    return cached[1]


def cached_weights(module: nn.Module, compute: Callable[[], T]) -> T:
    """``compute()`` (products of ``module``'s parameters, e.g. two linear maps folded into one), computed once
    and reused while no gradient is recorded and no parameter has changed (``cached_on``): scoring calls it once
    per tile, and the products cost as much as the pair work of a few pairs. Parameters made under
    ``torch.inference_mode`` carry no version counter, so for them nothing is cached. With autograd recording,
    computed on every call, except inside ``weights_shared``."""
    if torch.is_grad_enabled():
        shared = _SHARED_WEIGHTS.get()
        if shared is None:
            return compute()
        if module not in shared:
            shared[module] = compute()
        return shared[module]
    return cached_on(module, "_cached_weights", module.parameters(), compute)


_SHARED_WEIGHTS: contextvars.ContextVar[dict[nn.Module, Any] | None] = contextvars.ContextVar(
    "itmatch_shared_weights", default=None)


@contextlib.contextmanager
def weights_shared() -> Iterator[None]:
    """Inside the block ``cached_weights`` computes each module's products once with autograd too, for all calls
    of the block: many small scoring calls within one training step (``itmatch.train.active_pairs``) then share
    one product and its backward pass. The parameters must not change inside the block."""
    token = _SHARED_WEIGHTS.set({})
    try:
        yield
    finally:
        _SHARED_WEIGHTS.reset(token)


def pair_chunks(n_pair: int, n_node: int, dim: int = NODE_WIDTH) -> list[slice]:
    """Slices of whole pairs, each about as many node values as ``NODE_CHUNK_ROWS`` nodes of ``NODE_WIDTH`` (in
    nodes of ``dim`` values; at least one pair)."""
    step = max(1, NODE_CHUNK_ROWS * NODE_WIDTH // (n_node * dim))
    return [slice(start, start + step) for start in range(0, n_pair, step)]


def in_pair_chunks(step: Callable[..., torch.Tensor], nodes: torch.Tensor, *per_pair: torch.Tensor) -> torch.Tensor:
    """``step(nodes, *per_pair, out=...)`` over chunks of whole pairs (``pair_chunks``, sized by node values) into
    one result like ``nodes`` (P, N, k); ``per_pair`` tensors are cut along their first dimension (P) with the
    nodes. With autograd recording, one call over everything (no ``out``)."""
    if torch.is_grad_enabled():
        return step(nodes, *per_pair)
    out = torch.empty_like(nodes)
    for pairs in pair_chunks(*nodes.shape):
        step(nodes[pairs], *(tensor[pairs] for tensor in per_pair), out=out[pairs])
    return out
