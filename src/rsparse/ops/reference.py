"""Pure-PyTorch reference of ``rsparse::sparse_linear``; runs on any device.

It multiplies a masked copy of the input with the whole weight (so it reads every
weight byte): it is the numerical definition the fast kernels are checked against,
and the fallback where no kernel runs.  It has no host synchronisation and no
data-dependent shape, so it is safe inside CUDA graphs.
"""

from __future__ import annotations

import torch


def active_mask(x: torch.Tensor, c: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``|x| * c > tau`` computed in fp32.

    Kernels must build the mask with exactly these roundings (fp32 ``|x|``, times fp32
    ``c``, compared with fp32 ``tau``): a channel whose score sits on the threshold
    would otherwise flip between implementations.
    """
    return x.abs().float() * c > tau


def sparse_linear_reference(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    c: torch.Tensor,
    tau: torch.Tensor,
    lowrank_in: torch.Tensor,
    lowrank_out: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """See `rsparse.ops.sparse_linear`."""
    active = active_mask(x, c, tau)
    # The native-dtype matmul accumulates in fp32 on CPU and GPU; the sum of the
    # two paths is formed in fp32 and rounded once.
    # A Python 0.0 (not a 0-dim tensor) takes where's scalar path: half the time on CPU.
    y = torch.where(active, x, 0.0).matmul(weight_t).float()
    if lowrank_in.shape[1] > 0:
        inactive = torch.where(active, 0.0, x).float()
        y = y + (inactive @ lowrank_in.float()) @ lowrank_out.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
