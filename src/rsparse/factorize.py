"""Low-rank factors of a weight for the R-Sparse low-rank path (DESIGN.md §3, factorize)."""

from __future__ import annotations

import torch


def lowrank_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD of an ``[out, in]`` weight, in the layout `RSparseLinear` uses.

    The SVD runs in fp32 on the weight's device (fp64 would double the time for no
    measurable gain at the ranks budgets allow); only the leading ``rank`` factors are kept.

    Args:
        weight (`torch.Tensor`): ``[out, in]`` weight.
        rank (`int`): number of singular triplets to keep, ``0 <= rank <= min(out, in)``.

    Returns:
        ``(lowrank_in, lowrank_out)``: ``V_r`` as ``[in, rank]`` and ``(U_r S_r)ᵀ`` as
        ``[rank, out]``, both in the weight's dtype, so that
        ``x @ lowrank_in @ lowrank_out ≈ x @ weight.T``.

    Example:

    ```python
    >>> w = torch.randn(8, 6)
    >>> a, b = lowrank_factors(w, 6)
    >>> torch.allclose(a @ b, w.T, atol=1e-5)
    True
    ```
    """
    out_features, in_features = weight.shape
    if not 0 <= rank <= min(out_features, in_features):
        raise ValueError(f"rank must be in [0, {min(out_features, in_features)}], got {rank}")
    if rank == 0:
        return weight.new_zeros(in_features, 0), weight.new_zeros(0, out_features)
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    lowrank_in = vh[:rank].t()
    lowrank_out = (u[:, :rank] * s[:rank]).t()
    return lowrank_in.to(weight.dtype).contiguous(), lowrank_out.to(weight.dtype).contiguous()
