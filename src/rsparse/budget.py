"""Budget arithmetic (DESIGN.md §2): from a layer's shape and ``(s, rho)`` to ``(k, r)``.

The budget of a layer is a fraction ``1 - s`` of its dense weight bytes per decode
token, split between ``k`` gathered weight rows (the sparse path) and a rank-``r``
factorisation (the low-rank path): ``k*m + f*r*(n+m) ≈ (1-s)*m*n`` (``f = factor_bits / 16``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rsparse.config import LayerBudget
from rsparse.factor_quant import factor_bytes


def layer_budget(in_features: int, out_features: int, s: float, rho: float, factor_bits: int = 16) -> LayerBudget:
    """The budget of an ``out_features x in_features`` linear at sparsity ``s`` and sparse share ``rho``.

    Args:
        in_features (`int`): input channels ``n``.
        out_features (`int`): output channels ``m``.
        s (`float`): layer sparsity in ``[0, 1)``.
        rho (`float`): share of the budget spent on channels, in ``[0, 1]``.
        factor_bits (`int`, defaults to 16): bits per stored factor value (16 or 4): 4-bit factors
            cost a quarter of the bytes per rank (`rsparse.factor_quant`).

    Returns:
        `LayerBudget` with ``k = rho*(1-s)*n`` and ``r = floor((1-rho)*(1-s)*m*n/((m+n)*f))``,
        ``f = factor_bits / 16``, at most ``min(m, n)``.

    Example:

    ```python
    >>> layer_budget(4096, 14336, s=0.5, rho=1.0).k
    2048.0
    ```
    """
    if not 0.0 <= s < 1.0:
        raise ValueError(f"s must be in [0, 1), got {s}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    n, m = int(in_features), int(out_features)
    density = 1.0 - s
    k = rho * density * n
    r = rank_for(n, m, density, rho, factor_bits)
    return LayerBudget(in_features=n, out_features=m, s=float(s), rho=float(rho), k=float(k), r=int(r), factor_bits=factor_bits)


def rank_for(n: int, m: int, density: float, rho: float, factor_bits: int = 16) -> int:
    """The rank that ``(1 - rho)`` of a budget ``density * m * n`` buys with factors of ``factor_bits``."""
    # The small epsilon keeps exact products such as 0.5*0.2*... from flooring one below. Cheap
    # factors can buy more rank than the weight has: the rest of that share is left unspent.
    r = math.floor((1.0 - rho) * density * m * n / ((m + n) * factor_bytes(factor_bits)) + 1e-9)
    return min(r, m, n)


def model_sparsity(budgets: Iterable[LayerBudget]) -> float:
    """Weight-count-weighted mean sparsity over sparsified linears (0 for none)."""
    total = weighted = 0.0
    for b in budgets:
        weights = b.in_features * b.out_features
        total += weights
        weighted += weights * b.s
    return weighted / total if total else 0.0


def uniform_budgets(
    shapes: dict[str, tuple[int, int]], target: float, rho: float, factor_bits: int = 16
) -> dict[str, LayerBudget]:
    """Give every layer sparsity ``target`` and sparse share ``rho``.

    Args:
        shapes: ``{name: (in_features, out_features)}`` of the layers to sparsify.
        target: model-level (and per-layer) sparsity.
        rho: sparse share of every layer.
        factor_bits: bits per stored factor value (16 or 4).
    """
    return {name: layer_budget(n, m, target, rho, factor_bits) for name, (n, m) in shapes.items()}
