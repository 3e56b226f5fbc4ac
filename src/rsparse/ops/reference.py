"""Pure-PyTorch reference of ``rsparse::sparse_linear``; runs on any device.

It multiplies a masked copy of the input with the whole weight (so it reads every
weight byte): it is the numerical definition the fast kernels are checked against,
and the fallback where no kernel runs.  It has no host synchronisation and no
data-dependent shape, so it is safe inside CUDA graphs.

fp32 inputs on a GPU are summed in fp64 and rounded to fp32 once (`sums_in_fp64`), as the
Triton kernels sum them: the kernels add their split-K partial sums in an order no BLAS call
reproduces (and with atomics, in a run-dependent one), so fp32 sums would differ from the
reference by a rounding, and a rounding that lands on a threshold turns into a different
forward pass (benchmarks/NOTES.md, run 20).  Summed in fp64, both round the same exact
products to the same fp32 value, short of a sum within 2^-29 of a rounding tie.
"""

from __future__ import annotations

import torch

from rsparse.factor_quant import dequantize_factors


def active_mask(x: torch.Tensor, c: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``|x| * c > tau`` computed in fp32.

    Kernels must build the mask with exactly these roundings (fp32 ``|x|``, times fp32
    ``c``, compared with fp32 ``tau``): a channel whose score sits on the threshold
    would otherwise flip between implementations.
    """
    return x.abs().float() * c > tau


def sums_in_fp64(x: torch.Tensor) -> bool:
    """Whether the op sums ``x``'s products in fp64: fp32 inputs on a GPU, where the Triton kernels
    serve decode calls and both implementations must round to the same fp32 value.  On the CPU
    (no kernel to agree with; the interpreter is a test tool) fp32 sums stay fp32, at half the cost."""
    return x.dtype == torch.float32 and x.device.type == "cuda"


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
    lowrank_quant: torch.Tensor | None = None,
    *,
    fp64: bool | None = None,
) -> torch.Tensor:
    """See `rsparse.ops.sparse_linear`.  ``fp64``: sum fp32 inputs in fp64 (default: `sums_in_fp64`;
    tests set it to compare the Triton interpreter's fp32 results with this rule on the CPU)."""
    active = active_mask(x, c, tau)
    wide = x.dtype == torch.float32 and (sums_in_fp64(x) if fp64 is None else fp64)
    if lowrank_quant is not None:
        # Packed 4-bit factors (`rsparse.factor_quant`): values formed in fp32 (fp64 for fp64 sums),
        # never rounded to the activation dtype, as the kernels form them in registers.
        lowrank_in, lowrank_out = dequantize_factors(
            lowrank_in, lowrank_out, lowrank_quant, x.shape[1], torch.float64 if wide else torch.float32
        )
    if wide:
        y = torch.where(active, x, 0.0).double() @ weight_t.double()
        if lowrank_in.shape[1] > 0:
            # z rounded to fp32, as the kernels keep it between their two phases.
            z = (torch.where(active, 0.0, x).double() @ lowrank_in.double()).float()
            y = y + z.double() @ lowrank_out.double()
        if bias is not None:
            y = y + bias.double()
        y = y.float()
        return y if residual is None else residual + y
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
