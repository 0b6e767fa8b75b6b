"""Data-parallel training across processes (``torchrun``), exact to one process training the global batch.

With W processes each takes a contiguous slice of the global batch (captions sorted by length, so rank 0 holds the
longest). A step then runs as one process would on all B pairs:

- every process encodes its images, gathers all B image encodings *with gradient*, and scores them against its
  own captions: a (B, B/W) block of columns, which is gathered (with gradient) into the full (B, B) matrix, so
  hardest negatives are mined over the global batch and every process computes the same loss;
- the gathers' backward sums each piece's gradient over processes: every process then holds W times its share of
  the global gradient, and DDP's averaging divides the W back out;
- BatchNorm over images (SGRAF's visual self-attention) uses the statistics of the global batch
  (``GlobalBatchNorm1d``), and SAF's per-caption BatchNorm advances its running statistics over all B captions in
  order (``gather_caption_stats``), so every buffer is the same in all processes and equal to one process's.

Models with their own objective (``encode_train_batch``/``batch_loss``, e.g. VSE and HREM) have their encoded
batch gathered field by field the same way. The collectives run in a process group of their own, apart from
DDP's gradient buckets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.models.base import Matcher


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0. Pieces may differ in length and, on later dims, in width: those are zero-padded
    to the widest rank's. Backward sums each piece's gradient over ranks and returns this rank's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        shape = torch.tensor(x.shape, device=x.device)
        shapes = [torch.zeros_like(shape) for _ in range(world)]
        dist.all_gather(shapes, shape, group=group)
        widest = torch.stack(shapes).amax(0).tolist()
        padded = x.new_zeros(widest)
        padded[tuple(slice(0, n) for n in x.shape)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        lengths = [int(s[0]) for s in shapes]
        ctx.group, ctx.lengths, ctx.rank, ctx.shape = group, lengths, rank, x.shape
        return torch.cat([part[:n] for part, n in zip(parts, lengths)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.lengths[: ctx.rank])
        mine = grad[start : start + ctx.lengths[ctx.rank]]
        return mine[tuple(slice(0, n) for n in ctx.shape)], None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its backward is the same sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def gather_rows(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, with gradient; later dims are zero-padded to
    the widest rank's (captions of different lengths)."""
    return _GatherRows.apply(x, group)


def gather_fields(batch: Any, group: Any) -> Any:
    """A batch container (an ``Encoding`` dataclass or a NamedTuple of tensors) holding every rank's items:
    each tensor field gathered with ``gather_rows``, other fields kept."""
    def gather(value: Any) -> Any:
        return gather_rows(value, group) if isinstance(value, torch.Tensor) else value

    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: gather(getattr(batch, f.name))
                                             for f in dataclasses.fields(batch)})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(gather(value) for value in batch))
    raise ItmatchError(f"cannot gather a {type(batch).__name__} across processes; use a dataclass or NamedTuple")


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch over all ranks (gloo or NCCL;
    torch's ``SyncBatchNorm`` needs a GPU). In eval mode, or without a group, it is a plain ``BatchNorm1d``."""

    group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        x = x.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        dist.all_reduce(count, group=self.group)
        mean = _AllReduceSum.apply(x.sum(dims), self.group) / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims), self.group) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        return out


def synchronize_batch_statistics(model: Matcher, group: Any) -> None:
    """Make ``model``'s BatchNorms use global-batch statistics: every ``BatchNorm1d`` becomes a
    ``GlobalBatchNorm1d`` (same parameters and buffers, so state dicts are unchanged), and modules that keep
    per-caption statistics (``gather_caption_stats``, SAF) see all ranks' captions. Call before building the
    optimizer."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm1d:
                tensors = [*child.parameters(), *child.buffers()]
                synced = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats, device=tensors[0].device if tensors else None)
                synced.load_state_dict(child.state_dict())
                synced.group = group
                setattr(parent, name, synced)
            elif isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) is not GlobalBatchNorm1d:
                raise ItmatchError(f"distributed training synchronises BatchNorm1d only; {name} is a "
                                   f"{type(child).__name__}")
    model.set_caption_stats_gather(lambda stats: gather_rows(stats, group))
