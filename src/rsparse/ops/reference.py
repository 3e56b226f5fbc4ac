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


def rms_norm_reference(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """A Llama-style RMSNorm of ``h`` over its last dimension, with the roundings of Hugging Face's
    ``LlamaRMSNorm``: fp32 mean of squares, ``h * rsqrt(mean + eps)`` rounded to ``h``'s dtype, times
    ``weight`` (same dtype as ``h``).  The ops take it as their input where a decoder layer's norm is
    folded into their launch (``norm_weight``, `rsparse.fuse_norm`)."""
    hf = h.float()
    variance = hf.pow(2).mean(-1, keepdim=True)
    return weight * (hf * torch.rsqrt(variance + eps)).to(h.dtype)


def check_fold_args(x: torch.Tensor, norm_weight: torch.Tensor | None, residual: torch.Tensor | None, m: int | None) -> None:
    """ValueErrors for a folded norm weight or residual that does not fit ``x`` ``[T, n]`` and outputs of width ``m``."""
    if norm_weight is not None and (tuple(norm_weight.shape) != (x.shape[-1],) or norm_weight.dtype != x.dtype):
        raise ValueError(
            f"norm_weight must be [{x.shape[-1]}] in {x.dtype}, got {tuple(norm_weight.shape)} in {norm_weight.dtype}"
        )
    if residual is not None and (tuple(residual.shape) != (x.shape[0], m) or residual.dtype != x.dtype):
        raise ValueError(
            f"residual must be [{x.shape[0]}, {m}] in {x.dtype}, got {tuple(residual.shape)} in {residual.dtype}"
        )


def sparse_linear_reference(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    c: torch.Tensor,
    tau: torch.Tensor,
    lowrank_in: torch.Tensor,
    lowrank_out: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
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
    y = y.to(x.dtype)
    # A decoder layer's residual add (folded into the launch where `rsparse.fuse_norm` links it):
    # the same add, in the same dtype, as the model's own ``residual + hidden_states``.
    return y if residual is None else residual + y
