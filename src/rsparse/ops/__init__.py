"""The R-Sparse decode computation as one `torch.library` custom op.

``rsparse::sparse_linear(x, weight_t, c, tau, lowrank_in, lowrank_out, bias)`` computes,
for every token (row) of ``x`` (``[T, n]``)::

    active   = |x| * c > tau                      (score rule; c = 1 gives magnitude)
    y        = x[active] @ weight_t[active]        (sparse path: gathered weight rows)
             + (x[~active] @ lowrank_in) @ lowrank_out   (low-rank path, fp32)
             + bias

with ``weight_t`` the transposed weight ``[n, m]``, ``lowrank_in`` ``[n, r]`` (``V_r``),
``lowrank_out`` ``[r, m]`` (``(U_r S_r)ᵀ``), ``c`` the fp32 channel weights and ``tau`` a
0-dim fp32 threshold.  With ``lowrank_quant`` (fp32 ``[4, r]``) the factors are packed 4-bit
(`rsparse.factor_quant`: uint8 ``[ceil(n/2), r]`` and ``[ceil(r/2), m]``), and each value is
``offset + step * q`` formed in fp32 (fp64 with fp64 sums), never rounded to the activation dtype.  fp32 inputs on a GPU are summed in fp64 and rounded once, so
that every implementation gives the same fp32 numbers (`sums_in_fp64`).  The schema
is declared once here with a fake (shape)
implementation and the PyTorch reference, which runs on every device; faster
implementations (Triton) register against the same op.
"""

from __future__ import annotations

import torch

from rsparse.ops.reference import (
    active_mask, check_fold_args, rms_norm_reference, sparse_linear_reference, sums_in_fp64,
)

from rsparse.ops.fused import sparse_linear_multi, sparse_linear_multi_reference
from rsparse.ops.silu_mul import sparse_linear_silu_mul, sparse_linear_silu_mul_reference

__all__ = [
    "sparse_linear",
    "sparse_linear_multi",
    "active_mask",
    "rms_norm_reference",
    "sparse_linear_reference",
    "sums_in_fp64",
    "sparse_linear_multi_reference",
    "sparse_linear_silu_mul",
    "sparse_linear_silu_mul_reference",
    "set_backend",
    "get_backend",
]


@torch.library.custom_op("rsparse::sparse_linear", mutates_args=())
def sparse_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    c: torch.Tensor,
    tau: torch.Tensor,
    lowrank_in: torch.Tensor,
    lowrank_out: torch.Tensor,
    bias: torch.Tensor | None,
    active_fraction: float = 1.0,
    residual: torch.Tensor | None = None,
    lowrank_quant: torch.Tensor | None = None,
) -> torch.Tensor:
    """R-Sparse linear on ``x`` of shape ``[T, n]``; returns ``[T, m]`` in ``x.dtype``.

    ``active_fraction`` is the layer's expected share of active input channels (its budget's
    ``k / n``); it never changes the result, only which kernel launch serves it. ``residual``
    (``[T, m]``, ``x.dtype``): the result is then ``residual + y``, a decoder layer's residual add
    taken into the launch (`rsparse.fuse_norm`). ``lowrank_quant``: the ranges of packed 4-bit factors
    (module docstring)."""
    check_fold_args(x, None, residual, weight_t.shape[1])
    return sparse_linear_reference(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, residual, lowrank_quant)


@sparse_linear.register_fake
def _(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0, residual=None, lowrank_quant=None):
    torch._check(x.dim() == 2, lambda: f"x must be [T, n], got {tuple(x.shape)}")
    torch._check(x.shape[1] == weight_t.shape[0], lambda: "x and weight_t disagree on n")
    return x.new_empty(x.shape[0], weight_t.shape[1])


# Triton on CUDA (and on CPU under TRITON_INTERPRET=1), chosen per call; see ops/backend.py.
from rsparse.ops.backend import get_backend, register as _register_backends, set_backend  # noqa: E402

_register_backends(sparse_linear)
