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


#: Damping of the second moment before its Cholesky factor is taken (relative to its mean
#: diagonal): channels that are almost never inactive have almost no variance.
CHOLESKY_DAMP = 1e-5
# Eigenvalues below this share of the largest are fp32 rounding, not energy (`activation_aware_factors`).
EIGEN_FLOOR = 1e-5


def activation_aware_factors(
    weight: torch.Tensor, rank: int, second_moment: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors that minimise the expected output error on the inputs they will see.

    The low-rank path multiplies only the inactive part ``x̄`` of each input, so what should be
    small is ``E||W x̄ - A B x̄||²``, not ``||W - A B||_F``. Its minimiser projects the output
    ``y = W x̄`` onto the top-``rank`` principal directions ``U_r`` of its covariance
    ``W E[x̄ x̄ᵀ] Wᵀ``: ``A B = U_r U_rᵀ W`` (reduced-rank regression). The eigenproblem is
    solved on the smaller side of the weight: ``[out, out]`` directly, or ``[in, in]`` through
    a Cholesky factor of the second moment when ``in < out``.

    Args:
        weight (`torch.Tensor`): ``[out, in]`` weight.
        rank (`int`): rank to keep, ``0 <= rank <= min(out, in)``.
        second_moment (`torch.Tensor`): ``[in, in]`` ``E[x̄ x̄ᵀ]`` of the inactive inputs
            (`rsparse.calibrate.inactive_second_moments`).

    Returns:
        ``(lowrank_in [in, rank], lowrank_out [rank, out], residual)``: ``lowrank_in = Wᵀ U_r``
        and ``lowrank_out = U_rᵀ`` in the weight's dtype, and ``residual[r]`` the expected squared
        output error left at rank ``r <= rank`` (fp64, ``[rank + 1]``; ``residual[0]`` is the
        error with no low-rank path).

    Example:

    ```python
    >>> w = torch.randn(8, 6)
    >>> a, b, residual = activation_aware_factors(w, 6, torch.eye(6))
    >>> bool(residual[0] > residual[2] > residual[6] - 1e-3)
    True
    ```
    """
    out_features, in_features = weight.shape
    if not 0 <= rank <= min(out_features, in_features):
        raise ValueError(f"rank must be in [0, {min(out_features, in_features)}], got {rank}")
    if second_moment.shape != (in_features, in_features):
        raise ValueError(
            f"second_moment must be [{in_features}, {in_features}] for a weight of shape "
            f"{tuple(weight.shape)}, got {tuple(second_moment.shape)}"
        )
    # fp32 throughout: only the leading directions matter, and fp64 eigensolvers cost 2-3x.
    w, sigma = weight.detach().float(), second_moment.float()
    if out_features <= in_features:
        cov = w @ sigma @ w.t()
        energy, u = _top_eigenpairs(cov, rank)
    else:
        damp = CHOLESKY_DAMP * float(sigma.diagonal().mean()) + 1e-30
        chol = torch.linalg.cholesky(sigma + damp * torch.eye(in_features, dtype=sigma.dtype, device=sigma.device))
        m = w @ chol  # m mᵀ is the output covariance; its left singular vectors are U
        cov = m.t() @ m  # same non-zero spectrum, on the smaller side
        energy, v = _top_eigenpairs(cov, rank)
        # Directions the calibration inputs leave without output energy (fewer tokens than inputs make
        # the second moment singular): their m v is rounding noise, and dividing it by a near-zero
        # singular value gave factors of 1e26 (SmolLM2's layer-1 gate_proj at full rank, 256 tokens for
        # 576 inputs, one CPU thread; NOTES, thirty-third session). They carry no energy, so no factor.
        alive = energy > float(energy[:1].sum()) * EIGEN_FLOOR
        u = (m @ v) / energy.sqrt().clamp_min(1e-30) * alive
    total = float(cov.diagonal().double().sum())
    residual = (total - torch.cat([energy.new_zeros(1), energy.double().cumsum(0)])).clamp_min(0.0)
    u_r = u[:, :rank]
    return (
        (w.t() @ u_r).to(weight.dtype).contiguous(),
        u_r.t().to(weight.dtype).contiguous(),
        residual,
    )


def _top_eigenpairs(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues (descending) and eigenvectors of a symmetric PSD matrix.

    Budgets use ranks far below the matrix size, so a seeded randomized subspace iteration
    (a few power steps on ``k + 16`` vectors, then Rayleigh-Ritz) replaces the full
    eigendecomposition, which dominated the budget search on CPU. Small or large ``k``
    relative to the size falls back to `torch.linalg.eigh`.
    """
    d = a.shape[0]
    if k == 0:
        return a.new_zeros(0), a.new_zeros(d, 0)
    if 2 * (k + 16) >= d:
        energy, vectors = torch.linalg.eigh(a)
        return energy.flip(0)[:k].clamp_min(0), vectors.flip(1)[:, :k]
    # The start block is drawn on the CPU for every device: a CUDA generator draws other numbers from
    # the same seed, and on a flat spectrum four power steps do not wash that out (sparsify on the GPU
    # gave factors 3 % away from the CPU's on the tiny test model).
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(d, k + 16, generator=generator, dtype=a.dtype).to(a.device)
    for _ in range(4):
        q, _ = torch.linalg.qr(a @ q)
    energy, vectors = torch.linalg.eigh(q.t() @ a @ q)
    return energy.flip(0)[:k].clamp_min(0), (q @ vectors.flip(1))[:, :k]


def weight_svd_residual(weight: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """``E||(W - W_r) x̄||²`` for every rank ``r`` of the plain truncated SVD ``W_r`` (`lowrank_factors`).

    With ``W = Σ_j s_j u_j v_jᵀ`` and orthonormal ``u_j`` the error is ``Σ_{j>r} s_j² v_jᵀ E[x̄ x̄ᵀ] v_j``,
    so plain and activation-aware factors can be compared on the same inputs.

    Returns:
        fp64 ``[min(out, in) + 1]``, entry ``r`` the error left at rank ``r``.
    """
    _, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    energy = s.square() * torch.einsum("ji,ik,jk->j", vh, second_moment.double(), vh)
    return torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
