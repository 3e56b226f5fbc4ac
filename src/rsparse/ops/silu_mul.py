"""``rsparse::sparse_linear_silu_mul``: a gated MLP's down projection, fed ``F.silu(gate) * up``.

Llama-style MLPs compute ``down_proj(F.silu(gate_proj(x)) * up_proj(x))``. The product is one
small elementwise kernel per layer and decode step (≈ 1.3 µs on an H200, plus the gap between
launches; benchmarks/NOTES.md, decode profile). This op takes ``gate`` and ``up`` instead of
their product, so a kernel that loads its input channels itself can form them on the way (the
one-token ``inline`` launch of `rsparse.kernels.compact_gemv`). Its result is, by definition,
``rsparse::sparse_linear`` on ``F.silu(gate) * up`` formed in the input dtype, as eager PyTorch
forms it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsparse.ops.reference import check_fold_args, sparse_linear_reference

__all__ = ["sparse_linear_silu_mul", "sparse_linear_silu_mul_reference"]


def sparse_linear_silu_mul_reference(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight_t: torch.Tensor,
    c: torch.Tensor,
    tau: torch.Tensor,
    lowrank_in: torch.Tensor,
    lowrank_out: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    lowrank_quant: torch.Tensor | None = None,
) -> torch.Tensor:
    """See `sparse_linear_silu_mul`."""
    return sparse_linear_reference(
        F.silu(gate) * up, weight_t, c, tau, lowrank_in, lowrank_out, bias, residual, lowrank_quant
    )


@torch.library.custom_op("rsparse::sparse_linear_silu_mul", mutates_args=())
def sparse_linear_silu_mul(
    gate: torch.Tensor,
    up: torch.Tensor,
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
    """``rsparse::sparse_linear(F.silu(gate) * up, weight_t, ..., residual, lowrank_quant)`` for ``gate`` and
    ``up`` of shape ``[T, n]``; returns ``[T, m]`` in their dtype (``active_fraction``: a launch hint, as there)."""
    check_fold_args(gate, None, residual, weight_t.shape[1])
    return sparse_linear_silu_mul_reference(
        gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, residual, lowrank_quant
    )


@sparse_linear_silu_mul.register_fake
def _(gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0, residual=None,
      lowrank_quant=None):
    torch._check(gate.dim() == 2, lambda: f"gate must be [T, n], got {tuple(gate.shape)}")
    torch._check(gate.shape == up.shape, lambda: f"gate and up must have one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    torch._check(gate.shape[1] == weight_t.shape[0], lambda: "gate and weight_t disagree on n")
    return gate.new_empty(gate.shape[0], weight_t.shape[1])
