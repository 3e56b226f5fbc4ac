"""``rsparse::sparse_linear_multi``: several R-Sparse linears that read the same input.

The projections of one decoder layer that share an input (q/k/v, gate/up) can be served
by one kernel launch.  Each projection keeps its own tensors (so each `RSparseLinear`
keeps its own state dict); the op takes them as lists and returns one output per
projection, each equal to ``rsparse::sparse_linear`` on the same arguments.
"""

from __future__ import annotations

import torch

from rsparse.ops.reference import check_fold_args, rms_norm_reference, sparse_linear_reference

__all__ = ["sparse_linear_multi", "sparse_linear_multi_reference"]


def sparse_linear_multi_reference(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    lowrank_quant: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """See `sparse_linear_multi`."""
    if norm_weight is not None:
        x = rms_norm_reference(x, norm_weight, norm_eps)
    quant = lowrank_quant or [None] * len(weight_t)
    return [
        sparse_linear_reference(x, w, cj, tj, li, lo, b, None, q)
        for w, cj, tj, li, lo, b, q in zip(weight_t, c, tau, lowrank_in, lowrank_out, bias, quant)
    ]


# The schema is written out: inference has no type for an optional list of optional tensors.
@torch.library.custom_op(
    "rsparse::sparse_linear_multi",
    mutates_args=(),
    schema="(Tensor x, Tensor[] weight_t, Tensor[] c, Tensor[] tau, Tensor[] lowrank_in, Tensor[] lowrank_out, "
    "Tensor?[] bias, float active_fraction=1., Tensor? norm_weight=None, float norm_eps=0., "
    "Tensor?[]? lowrank_quant=None) -> Tensor[]",
)
def sparse_linear_multi(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    active_fraction: float = 1.0,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    lowrank_quant: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """``[sparse_linear(x, weight_t[i], c[i], ...) for i]`` for projections sharing ``x`` ``[T, n]``
    (``active_fraction``: the largest expected share of active channels among them, a launch hint;
    ``lowrank_quant``: one entry per projection, ``None`` for unpacked factors, or ``None`` for all).

    With ``norm_weight`` (``[n]``, ``x.dtype``), ``x`` is a decoder layer's residual stream and every
    projection reads ``rms_norm_reference(x, norm_weight, norm_eps)``: the layer's RMSNorm taken into
    the launch (`rsparse.fuse_norm`)."""
    check_fold_args(x, norm_weight, None, None)
    return sparse_linear_multi_reference(
        x, weight_t, c, tau, lowrank_in, lowrank_out, bias, norm_weight, norm_eps, lowrank_quant
    )


@sparse_linear_multi.register_fake
def _(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0, norm_weight=None, norm_eps=0.0,
      lowrank_quant=None):
    torch._check(x.dim() == 2, lambda: f"x must be [T, n], got {tuple(x.shape)}")
    counts = {len(weight_t), len(c), len(tau), len(lowrank_in), len(lowrank_out), len(bias)}
    torch._check(len(counts) == 1, lambda: "every argument list must have one entry per projection")
    for w in weight_t:
        torch._check(x.shape[1] == w.shape[0], lambda: "x and weight_t disagree on n")
    return [x.new_empty(x.shape[0], w.shape[1]) for w in weight_t]
