"""``rsparse::sparse_linear_multi``: several R-Sparse linears that read the same input.

The projections of one decoder layer that share an input (q/k/v, gate/up) can be served
by one kernel launch.  Each projection keeps its own tensors (so each `RSparseLinear`
keeps its own state dict); the op takes them as lists and returns one output per
projection, each equal to ``rsparse::sparse_linear`` on the same arguments.
"""

from __future__ import annotations

import torch

from rsparse.ops.reference import sparse_linear_reference

__all__ = ["sparse_linear_multi", "sparse_linear_multi_reference"]


def sparse_linear_multi_reference(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
) -> list[torch.Tensor]:
    """See `sparse_linear_multi`."""
    return [
        sparse_linear_reference(x, *args) for args in zip(weight_t, c, tau, lowrank_in, lowrank_out, bias)
    ]


@torch.library.custom_op("rsparse::sparse_linear_multi", mutates_args=())
def sparse_linear_multi(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    active_fraction: float = 1.0,
) -> list[torch.Tensor]:
    """``[sparse_linear(x, weight_t[i], c[i], ...) for i]`` for projections sharing ``x`` ``[T, n]``
    (``active_fraction``: the largest expected share of active channels among them, a launch hint)."""
    return sparse_linear_multi_reference(x, weight_t, c, tau, lowrank_in, lowrank_out, bias)


@sparse_linear_multi.register_fake
def _(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0):
    torch._check(x.dim() == 2, lambda: f"x must be [T, n], got {tuple(x.shape)}")
    counts = {len(weight_t), len(c), len(tau), len(lowrank_in), len(lowrank_out), len(bias)}
    torch._check(len(counts) == 1, lambda: "every argument list must have one entry per projection")
    for w in weight_t:
        torch._check(x.shape[1] == w.shape[0], lambda: "x and weight_t disagree on n")
    return [x.new_empty(x.shape[0], w.shape[1]) for w in weight_t]
