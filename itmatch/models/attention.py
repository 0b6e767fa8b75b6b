"""Attention blocks of the SGRAF family: self-attention global vectors and SCAN cross-attention (either way).

Module and parameter names follow the SGRAF release so the authors' state dicts load unchanged.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from itmatch.models.layers import cached_weights, l2norm, l2norm_, length_mask, xavier_init_
from itmatch.models.softmax import softmax

#: Elements of one block of differences in ``similarity_vectors`` per intra-op thread (1 MiB of float32, about a
#: core's L2 cache; measured faster than 512 KiB at one thread, and 2 threads share a block twice the size).
BLOCK_ELEMENTS = 256 * 1024
#: Blocks of ``ProjectedSquares``' backward pass, in forward blocks: its thin products (the projection's gradient,
#: summed over the block's rows) run closer to the matmul rate over more rows, a few MiB still in the L3 cache.
BACKWARD_BLOCKS = 4


class VisualSelfAttention(nn.Module):
    """Global image vector (B, d) from regions (B, R, d): the region mean guides a softmax over regions.

    Both branches are Linear -> BatchNorm -> tanh -> dropout; the BatchNorm of the local branch runs over
    the R region slots (``BatchNorm1d(R)``), exactly as released, so R is fixed by the model.
    """

    def __init__(self, embed_dim: int, dropout: float, num_regions: int) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(num_regions),
                                             nn.Tanh(), nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(embed_dim),
                                              nn.Tanh(), nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        xavier_init_(self)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        local = self.embedding_local(regions)
        glob = self.embedding_global(regions.mean(1))
        weights = softmax(self.embedding_common(local * glob[:, None]).squeeze(2), dim=1)
        return l2norm((weights[:, :, None] * regions).sum(1))


class TextSelfAttention(nn.Module):
    """Global text vector (B, d) from zero-padded words (B, L, d) and lengths (B,); padding is masked out.

    Branches are Linear -> tanh -> dropout (no BatchNorm on the text side, as released).
    """

    def __init__(self, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))
        xavier_init_(self)

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(words.shape[1], device=words.device) < lengths[:, None]
        mean = words.sum(1) / lengths[:, None].to(words.dtype)
        local = self.embedding_local(words)
        glob = self.embedding_global(mean)
        logits = self.embedding_common(local * glob[:, None]).squeeze(2).masked_fill(~valid, float("-inf"))
        weights = softmax(logits, dim=1)
        return l2norm((weights[:, :, None] * words).sum(1))


def attention_weights(context: torch.Tensor, queries: torch.Tensor, smooth: float,
                      context_lengths: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """SCAN attention weights (A, B, Nq, Nc) of every query vector over every context set (the softmax that
    ``cross_attention`` sums the context with): context (A, Nc, d), queries (B, Nq, d), zero-padded.

    a = LeakyReLU_0.1(context · query), L2-normalised across each query set's vectors, softmax over the context
    at temperature ``smooth``; context positions at or past ``context_lengths`` (A,) get weight 0. Over a
    caption's words (TSHSR's regions attending to words) the softmax's rows are short and strided, where
    ``itmatch.models.softmax`` ran 23× faster than PyTorch's kernel (118 against 2,740 µs a tile).
    """
    n_ctx, n_pos, dim = context.shape
    n_qry, n_vec, _ = queries.shape
    scores = torch.nn.functional.leaky_relu(context.reshape(-1, dim) @ queries.reshape(-1, dim).T, 0.1)
    scores = scores.view(n_ctx, n_pos, n_qry, n_vec)
    if context_lengths is None:
        scores = scores / (scores.square().sum(3, keepdim=True).sqrt() + eps)
        logits = scores.permute(0, 2, 3, 1) * smooth
    else:
        padding = ~length_mask(context_lengths, n_pos)
        # A padding position's scores are all zero: norm it by 1, not sqrt(0), whose gradient is infinite.
        square_sum = scores.square().sum(3, keepdim=True).masked_fill(padding[:, :, None, None], 1.0)
        scores = scores / (square_sum.sqrt() + eps)
        logits = scores.permute(0, 2, 3, 1).masked_fill(padding[:, None, None, :], float("-inf")) * smooth
    return softmax(logits, dim=3)


def cross_attention(context: torch.Tensor, queries: torch.Tensor, smooth: float,
                    context_lengths: torch.Tensor | None = None, minus_queries: bool = False,
                    eps: float = 1e-8) -> torch.Tensor:
    """SCAN cross-attention for every context set × query set: each query vector attends over a context set.

    context (A, Nc, d), queries (B, Nq, d), both zero-padded -> attended context vectors (A, B, Nq, d),
    L2-normalised. As released: a = LeakyReLU_0.1(context · query), L2-normalised across each query set's
    vectors (padding vectors are zero and add nothing), softmax over the context at temperature ``smooth``;
    context positions at or past ``context_lengths`` (A,) are left out of the softmax (none when ``None``).
    The L2 norm of the attended vector is applied to the small weight matrix (``normalised_weights``) rather
    than to the d-dimensional result, except for few query vectors (one search query), where it is cheaper to
    normalise the result directly. ``minus_queries`` returns ``attended - query`` instead (what similarity
    vectors need), fused into the same product: the large result is written once.
    """
    n_ctx, n_pos, dim = context.shape
    n_qry, n_vec, _ = queries.shape
    flat_queries = queries.reshape(1, n_qry * n_vec, dim)
    if n_qry * n_vec <= n_pos:
        weights = attention_weights(context, queries, smooth, context_lengths, eps).reshape(n_ctx, -1, n_pos)
        attended = l2norm(torch.bmm(weights, context), eps=eps)
        if minus_queries:
            attended = attended - flat_queries
    else:
        weights = normalised_weights(context, queries, smooth, context_lengths, eps)
        attended = (torch.baddbmm(flat_queries, weights, context, beta=-1) if minus_queries
                    else torch.bmm(weights, context))
    return attended.view(n_ctx, n_qry, n_vec, dim)


def normalised_weights(context: torch.Tensor, queries: torch.Tensor, smooth: float,
                       context_lengths: torch.Tensor | None = None, eps: float = 1e-8,
                       gram: torch.Tensor | None = None) -> torch.Tensor:
    """``attention_weights`` (A, B·Nq, Nc) divided by the norm of the vector they attend to (plus ``eps``), so
    that ``weights @ context`` is the L2-normalised attended vector. The norm comes from the context's Gram
    matrix (||w·C||² = wᵀ(CCᵀ)w, ``gram`` (A, Nc, Nc) when the caller keeps it): no pass over the
    d-dimensional result."""
    n_ctx, n_pos, _ = context.shape
    weights = attention_weights(context, queries, smooth, context_lengths, eps).reshape(n_ctx, -1, n_pos)
    if gram is None:
        gram = context @ context.transpose(1, 2)
    norm = ((weights @ gram) * weights).sum(2, keepdim=True).clamp_min(0).sqrt()
    return weights / (norm + eps)


def similarity_vectors(context: torch.Tensor, queries: torch.Tensor, smooth: float, project: nn.Linear,
                       context_lengths: torch.Tensor | None = None, eps: float = 1e-8,
                       gram: torch.Tensor | None = None) -> torch.Tensor:
    """SGRAF's local similarity vectors ``l2norm(W (attended - query)²)`` for every context set × query set:
    context (A, Nc, d), queries (B, Nq, d) -> (A, B, Nq, k), k = ``project``'s output size (attention as in
    ``cross_attention``).

    The (B·Nq, d) differences are made a block at a time (rows of one context set, or a few whole sets:
    ``_blocks``) in a reused buffer that stays in the CPU's L2 cache, squared in place and projected
    straight into the result: the largest tensor of the pair work is never written to memory in full, and no
    large temporary is allocated (fresh pages of a large temporary cost page faults). Training goes the same
    way (``ProjectedSquares`` recomputes each block in its backward pass). Autocast (bf16: the products pick
    their own dtypes) and a few query vectors with autograd recording (never the case in training) take the
    batched expression. ``gram``: the context's Gram matrices, if the caller keeps them (``normalised_weights``).
    """
    n_ctx, n_pos, dim = context.shape
    n_qry, n_vec, _ = queries.shape
    rows = n_qry * n_vec
    direct = rows <= n_pos  # few query vectors: normalise each attended vector directly
    if (direct and torch.is_grad_enabled()) or torch.is_autocast_enabled(context.device.type):
        difference = cross_attention(context, queries, smooth, context_lengths, minus_queries=True, eps=eps)
        return l2norm(project(difference.square()))
    flat_queries = queries.reshape(rows, dim)
    if direct:
        weights = attention_weights(context, queries, smooth, context_lengths, eps).reshape(n_ctx, -1, n_pos)
        out = _projected_squares(weights, context, flat_queries, _columns(project), project.bias, eps)
    else:
        weights = normalised_weights(context, queries, smooth, context_lengths, eps, gram)
        if torch.is_grad_enabled():  # normalised inside, its backward blocked too
            return ProjectedSquares.apply(weights, context, flat_queries, project.weight, project.bias,
                                          eps).view(n_ctx, n_qry, n_vec, -1)
        out = _projected_squares(weights, context, flat_queries, _columns(project), project.bias)
    return l2norm_(out, 2, eps).view(n_ctx, n_qry, n_vec, -1)


def _columns(project: nn.Linear) -> torch.Tensor:
    """``project``'s weight transposed into contiguous (d, k) columns, kept while the weight is unchanged: MKL's
    product with it ran 2–4 % faster (SGR, SAF scoring) than with the transposed view of the (k, d) weight."""
    return cached_weights(project, lambda: project.weight.T.contiguous())


def _blocks(n_ctx: int, rows: int, dim: int, size: int | None = None) -> Iterator[tuple[slice, slice]]:
    """(context sets, rows) slices of the blocks of ``similarity_vectors``: about ``size`` (``_block_size()``)
    elements each; rows split into equal parts when one set's rows are more, several whole sets at once when they
    are fewer (one search query's few words: a small product per picture would cost more in calls than in
    arithmetic)."""
    size = size or _block_size()
    if rows * dim >= size:
        sets, parts = 1, -(-rows * dim // size)
        step = -(-rows // parts)
    else:
        sets, step = size // (rows * dim), rows
    for first in range(0, n_ctx, sets):
        for start in range(0, rows, step):
            yield slice(first, min(first + sets, n_ctx)), slice(start, min(start + step, rows))


def _block_size() -> int:
    """Elements of one block: ``BLOCK_ELEMENTS`` per intra-op thread."""
    return BLOCK_ELEMENTS * torch.get_num_threads()


def _projected_squares(weights: torch.Tensor, context: torch.Tensor, queries: torch.Tensor, columns: torch.Tensor,
                       bias: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``((weights @ context) - queries)² Wᵀ + b`` per context set, block by block: weights (A, n, Nc), context
    (A, Nc, d), queries (n, d), columns (d, k) = ``Wᵀ`` contiguous (``_columns``) -> (A, n, k). With ``eps``, each
    ``weights @ context`` row is first L2-normalised (the direct normalisation); without, ``weights`` already
    carry it. The bias is added to each block's product while it is in the caches (``addmm`` would first copy it
    into the block's fresh rows of ``out`` and have the product read them back: 1–3 % slower)."""
    n_ctx, rows, _ = weights.shape
    dim, k = columns.shape
    out = torch.empty(n_ctx, rows, k, dtype=context.dtype, device=context.device)
    buffer = torch.empty(_block_size() + dim, dtype=context.dtype, device=context.device)  # any block fits
    for sets, part in _blocks(n_ctx, rows, dim):
        block = _difference(weights, context, queries, sets, part, buffer, eps, square=True)
        torch.mm(block.view(-1, dim), columns, out=out[sets, part].view(-1, k)).add_(bias)
    return out


def _difference(weights: torch.Tensor, context: torch.Tensor, queries: torch.Tensor, sets: slice, part: slice,
                buffer: torch.Tensor, eps: float | None = None, square: bool = False) -> torch.Tensor:
    """``weights @ context - queries`` of one block (sets, rows, d), written into ``buffer``'s storage; squared
    with ``square``, in the same pass as the subtraction (``mse_loss`` without reduction: one pass over the
    block where subtracting and squaring take two, and no copy of the queries into it for ``baddbmm``)."""
    n_sets, n_rows = sets.stop - sets.start, part.stop - part.start
    block = buffer[:n_sets * n_rows * context.shape[2]].view(n_sets, n_rows, -1)
    if eps is None and not square:
        return torch.baddbmm(queries[part], weights[sets, part], context[sets], beta=-1, out=block)
    torch.bmm(weights[sets, part], context[sets], out=block)
    if eps is not None:
        l2norm_(block, 2, eps)
    if square:
        return torch.ops.aten.mse_loss.out(block, queries[part].expand_as(block), 0, out=block)  # 0: no reduction
    return block.sub_(queries[part])


class ProjectedSquares(torch.autograd.Function):
    """``l2norm(_projected_squares(...))`` (attention weights normalised in advance) with a blocked backward pass:
    each block's difference is recomputed in cache-sized buffers instead of being kept, so neither pass writes or
    keeps a (pairs × words × d) tensor, and the L2 norm's backward runs on the same blocks (its autograd chain
    made five passes over the (pairs × words × k) result). Gradients: with ``D = wC - q``, ``S = D²``,
    ``Y = S Wᵀ + b``, ``r = ||Y||``, ``Z = Y / (r + eps)`` and ``G = dL/dZ``: ``dY = G / (r + eps) - Z (Z·G) / r``,
    ``dW = dYᵀ S``, ``db = Σ dY``, ``dD = 2 D ⊙ (dY W)``, ``dw = dD Cᵀ``, ``dC = wᵀ dD``, ``dq = -Σ_sets dD``."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, context: torch.Tensor, queries: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, eps: float) -> torch.Tensor:
        out = _projected_squares(weights, context, queries, weight.T.contiguous(), bias)
        norm = out.norm(dim=2, keepdim=True)
        out.div_(norm + eps)
        ctx.eps = eps
        ctx.save_for_backward(weights, context, queries, weight, out, norm)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weights, context, queries, weight, out, norm = ctx.saved_tensors
        n_ctx, rows, _ = weights.shape
        dim, k = context.shape[2], weight.shape[0]
        grad_weights, grad_context = torch.empty_like(weights), torch.empty_like(context)
        grad_queries, grad_weight = torch.zeros_like(queries), torch.zeros_like(weight)
        grad_bias = torch.zeros_like(weight[:, 0])
        twice = 2 * weight  # dD's factor 2 in the product (exact: a power of two), not a pass over each block
        size = _block_size() * BACKWARD_BLOCKS
        buffer, square, grad_difference = (context.new_empty(size + dim) for _ in range(3))  # any block fits
        grad_projected = context.new_empty(size // dim * k + k)
        for sets, part in _blocks(n_ctx, rows, dim, size):
            difference = _difference(weights, context, queries, sets, part, buffer)
            grad_block = _norm_backward(grad[sets, part], out[sets, part], norm[sets, part], ctx.eps,
                                        grad_projected)
            squared = torch.mul(difference, difference, out=square[:difference.numel()].view_as(difference))
            grad_weight.addmm_(grad_block.T, squared.view(-1, dim))
            grad_bias += grad_block.sum(0)
            block = grad_difference[:difference.numel()].view_as(difference)
            torch.mm(grad_block, twice, out=block.view(-1, dim))
            block.mul_(difference)
            torch.bmm(block, context[sets].transpose(1, 2), out=grad_weights[sets, part])
            if part.start == 0:  # a set's first rows: written, not added (no pass zeroing the whole gradient)
                torch.bmm(weights[sets, part].transpose(1, 2), block, out=grad_context[sets])
            else:
                grad_context[sets].baddbmm_(weights[sets, part].transpose(1, 2), block)
            grad_queries[part] -= block.sum(0)
        return grad_weights, grad_context, grad_queries, grad_weight, grad_bias, None


def _norm_backward(grad: torch.Tensor, out: torch.Tensor, norm: torch.Tensor, eps: float,
                   buffer: torch.Tensor) -> torch.Tensor:
    """The gradient (n, k) of ``Y`` from that of ``Z = Y / (||Y|| + eps)``: ``G / (r + eps) - Z (Z·G) / r`` for one
    block (sets, rows, k) of ``grad``, ``out`` (Z) and ``norm`` (r), written into ``buffer``'s storage."""
    result = buffer[:grad.numel()].view_as(grad)
    torch.div(grad, norm + eps, out=result)
    result.sub_(out * ((out * grad).sum(2, keepdim=True) / norm))
    return result.view(-1, grad.shape[2])


def attended_regions(regions: torch.Tensor, words: torch.Tensor, smooth: float,
                     eps: float = 1e-8) -> torch.Tensor:
    """Text-to-visual attention for every image × caption pair: each word attends over each image's regions.

    regions (I, R, d), words (C, L, d) zero-padded -> attended region vectors (I, C, L, d), L2-normalised
    (``cross_attention`` with the regions as context: a is normalised across the caption's words, the softmax
    runs over regions).
    """
    return cross_attention(regions, words, smooth, eps=eps)
