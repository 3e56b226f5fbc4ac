"""Triton kernels for ``rsparse::sparse_linear`` and ``rsparse::sparse_linear_multi``.

Layout assumed (DESIGN.md §4): ``x`` ``[T, n]`` (unit stride along ``n``), ``weight_t``
``[n, m]`` row-major, so input channel ``j`` owns the contiguous row ``weight_t[j]``;
``lowrank_in`` ``[n, r]`` and ``lowrank_out`` ``[r, m]`` row-major; ``c`` fp32 ``[n]``;
``tau`` a 0-dim fp32 tensor.  One launch serves up to three projections that share ``x``
(q/k/v, gate/up): every projection keeps its own tensors, the grid is the union of their
output tiles.

Two kernels:

* ``_lowrank_z_kernel`` (only when some projection has rank > 0): per block of input
  channels, the mask ``|x|*c > tau`` and ``z += V_rᵀ (x ⊙ (1 - m))`` by fp32 atomics into
  ``z`` ``[T, r]``.  Reads ``n*r`` factor elements, ``2*T*n*r`` FLOP.
* ``_gemv_kernel``: gather-GEMV over the rows of ``[Wᵀ ; (U_r S_r)ᵀ]``.  A program owns
  ``BLOCK_K*ITERS`` rows and ``BLOCK_M`` output columns; it recomputes the mask of its rows
  (cheaper than a launch to share it) and loads a weight row only when some token of the
  block keeps that channel (masked-off lanes issue no memory traffic).  The low-rank rows
  are extra "virtual channels" whose coefficients are ``z``.  Partial sums go to an fp32
  workspace by atomics; the last program of an output tile (counted with an acq_rel
  atomic) adds the bias and writes the output in its dtype, so no extra launch converts
  it.  Reads about ``(k*m + r*m) * itemsize`` weight bytes, ``2*T*(k + r)*m`` FLOP.

Graph safety: the grid depends only on shapes; programs with nothing to do exit at once;
no host synchronisation; the only allocation is one zero-filled fp32 workspace whose
size depends on shapes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_PROJ = 3  # q/k/v is the widest group a decoder layer has


@triton.jit
def _accumulate(acc, coef, w, t_row, BLOCK_T: tl.constexpr):
    # acc [BLOCK_T, BLOCK_M] += coef [BLOCK_T, BLOCK_K] @ w [BLOCK_K, BLOCK_M], one token at
    # a time: BLOCK_T <= 8 is too small for tensor cores, and a 3-D broadcast would hold
    # BLOCK_T times the weight tile in registers.
    for t in tl.static_range(BLOCK_T):
        if BLOCK_T == 1:
            ct = tl.sum(coef, axis=0)
        else:
            ct = tl.sum(tl.where(t_row[:, None] == t, coef, 0.0), axis=0)
        pt = tl.sum(ct[:, None] * w, axis=0)
        if BLOCK_T == 1:
            acc += pt[None, :]
        else:
            acc = tl.where(t_row[:, None] == t, acc + pt[None, :], acc)
    return acc


@triton.jit
def _load_x_block(x_ptr, stride_xt, offs_t, t_ok, offs_k, k_ok):
    xv = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
    return xv.to(tl.float32)


@triton.jit
def _active(xf, c_ptr, tau, offs_k, k_ok, t_ok):
    # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
    cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
    return (tl.abs(xf) * cv[None, :] > tau) & t_ok[:, None] & k_ok[None, :]


@triton.jit
def _z_part(
    x_ptr, stride_xt, c_ptr, tau_ptr, li_ptr, stride_li, z_ptr, stride_z,
    T, n, r, pid_k, pid_t,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    t_row = tl.arange(0, BLOCK_T)
    offs_t = pid_t * BLOCK_T + t_row
    t_ok = offs_t < T
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs_k < n
    xf = _load_x_block(x_ptr, stride_xt, offs_t, t_ok, offs_k, k_ok)
    active = _active(xf, c_ptr, tl.load(tau_ptr), offs_k, k_ok, t_ok)
    inactive = (~active) & t_ok[:, None] & k_ok[None, :]
    coef = tl.where(inactive, xf, 0.0)
    for r0 in range(0, r, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < r
        v = tl.load(li_ptr + offs_k[:, None] * stride_li + offs_r[None, :], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
        acc = _accumulate(acc, coef, v.to(tl.float32), t_row, BLOCK_T)
        tl.atomic_add(z_ptr + offs_t[:, None] * stride_z + offs_r[None, :], acc, mask=t_ok[:, None] & r_ok[None, :], sem="relaxed")


@triton.jit
def _lowrank_z_kernel(
    x_ptr, stride_xt, T, n,
    c0, tau0, li0, sli0, z0, sz0, r0,
    c1, tau1, li1, sli1, z1, sz1, r1,
    c2, tau2, li2, sli2, z2, sz2, r2,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_k = tl.program_id(0)
    proj = tl.program_id(1)
    pid_t = tl.program_id(2)
    if proj == 0:
        _z_part(x_ptr, stride_xt, c0, tau0, li0, sli0, z0, sz0, T, n, r0, pid_k, pid_t, BLOCK_T, BLOCK_K, BLOCK_R)
    elif proj == 1:
        _z_part(x_ptr, stride_xt, c1, tau1, li1, sli1, z1, sz1, T, n, r1, pid_k, pid_t, BLOCK_T, BLOCK_K, BLOCK_R)
    else:
        _z_part(x_ptr, stride_xt, c2, tau2, li2, sli2, z2, sz2, T, n, r2, pid_k, pid_t, BLOCK_T, BLOCK_K, BLOCK_R)


@triton.jit
def _gemv_part(
    x_ptr, stride_xt, T, n, pid_k, tile, pid_t,
    w_ptr, stride_w, c_ptr, tau_ptr, lo_ptr, stride_lo, z_ptr, stride_z,
    ws_ptr, cnt_ptr, bias_ptr, out_ptr, stride_o, m, r, n_tiles,
    HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    ITERS: tl.constexpr,
):
    rows = BLOCK_K * ITERS
    n_chunks_w = tl.cdiv(n, rows)
    n_chunks = n_chunks_w + tl.cdiv(r, rows)
    if pid_k < n_chunks:  # fixed grid: the programs past this projection's rows exit
        t_row = tl.arange(0, BLOCK_T)
        offs_t = pid_t * BLOCK_T + t_row
        t_ok = offs_t < T
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m
        acc = tl.zeros([BLOCK_T, BLOCK_M], dtype=tl.float32)
        if pid_k < n_chunks_w:
            tau = tl.load(tau_ptr)
            for i in range(ITERS):
                offs_k = (pid_k * ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
                k_ok = offs_k < n
                xf = _load_x_block(x_ptr, stride_xt, offs_t, t_ok, offs_k, k_ok)
                active = _active(xf, c_ptr, tau, offs_k, k_ok, t_ok)
                coef = tl.where(active, xf, 0.0)
                # A row is read when any token of the block keeps its channel.
                row_on = tl.max(active.to(tl.int32), axis=0) > 0
                w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=row_on[:, None] & m_ok[None, :], other=0.0)
                acc = _accumulate(acc, coef, w.to(tl.float32), t_row, BLOCK_T)
        else:
            for i in range(ITERS):
                offs_k = ((pid_k - n_chunks_w) * ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
                k_ok = offs_k < r
                coef = tl.load(z_ptr + offs_t[:, None] * stride_z + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(lo_ptr + offs_k[:, None] * stride_lo + offs_m[None, :], mask=k_ok[:, None] & m_ok[None, :], other=0.0)
                acc = _accumulate(acc, coef, w.to(tl.float32), t_row, BLOCK_T)
        o_mask = t_ok[:, None] & m_ok[None, :]
        ws_ptrs = ws_ptr + offs_t[:, None] * m + offs_m[None, :]
        tl.atomic_add(ws_ptrs, acc, mask=o_mask, sem="relaxed")
        # Every thread's partial sums land before the counter moves (release), and the
        # last program sees all of them (acquire), reading through L2 (volatile).
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + pid_t * n_tiles + tile, 1, sem="acq_rel")
        if done == n_chunks - 1:
            y = tl.load(ws_ptrs, mask=o_mask, other=0.0, volatile=True)
            if HAS_BIAS:
                y += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + offs_t[:, None] * stride_o + offs_m[None, :], y.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _gemv_kernel(
    x_ptr, stride_xt, T, n,
    w0, sw0, c0, tau0, lo0, slo0, z0, sz0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0,
    w1, sw1, c1, tau1, lo1, slo1, z1, sz1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1,
    w2, sw2, c2, tau2, lo2, slo2, z2, sz2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2,
    BIAS0: tl.constexpr, BIAS1: tl.constexpr, BIAS2: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, ITERS: tl.constexpr,
):
    pid_k = tl.program_id(0)
    tile = tl.program_id(1)  # output tiles of projection 0, then 1, then 2
    pid_t = tl.program_id(2)
    if tile < tiles0:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile, pid_t,
                   w0, sw0, c0, tau0, lo0, slo0, z0, sz0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0,
                   BIAS0, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)
    elif tile < tiles0 + tiles1:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile - tiles0, pid_t,
                   w1, sw1, c1, tau1, lo1, slo1, z1, sz1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1,
                   BIAS1, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)
    else:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile - tiles0 - tiles1, pid_t,
                   w2, sw2, c2, tau2, lo2, slo2, z2, sz2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2,
                   BIAS2, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)


@dataclass(frozen=True)
class Config:
    """Tile sizes of one launch; `choose_config` picks them from shapes only."""

    block_k: int = 32
    block_m: int = 256
    iters: int = 8
    num_warps: int = 4
    num_stages: int = 2
    block_k_z: int = 32
    block_r: int = 64


_OVERRIDE: Config | None = None


def set_config(config: Config | None) -> None:
    """Force tile sizes for every launch (for benchmarks sweeping configurations)."""
    global _OVERRIDE
    _OVERRIDE = config


def choose_config(n: int, m_total: int, block_t: int, itemsize: int) -> Config:
    """Tile sizes from shapes: wide rows for coalesced loads, about four programs per SM."""
    if _OVERRIDE is not None:
        return _OVERRIDE
    block_m = 256 if m_total >= 2048 else max(32, triton.next_power_of_2(max(m_total // 8, 1)))
    block_m = min(block_m, 512 // itemsize * 2)  # keep the tile in registers for fp32
    block_k = 32 if block_t <= 2 else 16
    tiles = triton.cdiv(m_total, block_m)
    # ~528 programs fill 132 SMs four deep; fewer rows per program past that only adds atomics.
    iters = max(1, min(16, triton.cdiv(n * tiles, 528 * block_k)))
    return Config(block_k=block_k, block_m=block_m, iters=iters)


def sparse_linear_multi(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    out: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Triton implementation of ``rsparse::sparse_linear_multi`` (at most `MAX_PROJ` projections
    per launch; longer lists are served in groups).  ``out`` (optional) receives the results,
    e.g. NaN-filled buffers in tests proving that every element is written."""
    if len(weight_t) > MAX_PROJ:
        outs = []
        for s in range(0, len(weight_t), MAX_PROJ):
            e = s + MAX_PROJ
            outs += sparse_linear_multi(
                x, weight_t[s:e], c[s:e], tau[s:e], lowrank_in[s:e], lowrank_out[s:e], bias[s:e],
                None if out is None else out[s:e],
            )
        return outs
    T, n = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    ms = [w.shape[1] for w in weight_t]
    rs = [li.shape[1] for li in lowrank_in]
    outs = [x.new_empty(T, m) for m in ms] if out is None else out
    if T == 0:
        return outs
    block_t = min(triton.next_power_of_2(T), 8)
    t_blocks = triton.cdiv(T, block_t)
    cfg = choose_config(n, sum(ms), block_t, x.element_size())
    tiles = [triton.cdiv(m, cfg.block_m) for m in ms]

    # One zero-filled fp32 workspace: the split-K sums, z, and the tile counters.
    sizes = [T * m for m in ms] + [T * r for r in rs] + [t_blocks * t for t in tiles]
    flat = torch.zeros(sum(sizes), dtype=torch.float32, device=x.device)
    parts = list(flat.split(sizes))
    ws = parts[: len(ms)]
    z = [p.view(T, r) for p, r in zip(parts[len(ms) : 2 * len(ms)], rs)]
    cnt = [p.view(torch.int32) for p in parts[2 * len(ms) :]]

    w_ = [w if w.stride(1) == 1 else w.contiguous() for w in weight_t]
    li_ = [a if a.shape[1] == 0 or a.stride(1) == 1 else a.contiguous() for a in lowrank_in]
    lo_ = [a if a.shape[0] == 0 or a.stride(1) == 1 else a.contiguous() for a in lowrank_out]
    pad = MAX_PROJ - len(ms)

    def slot(seq, fill):
        return list(seq) + [fill] * pad

    if any(rs):
        rows_z = triton.cdiv(n, cfg.block_k_z)
        args = [x, x.stride(0), T, n]
        for ci, ti, li, zi, ri in zip(
            slot(c, c[0]), slot(tau, tau[0]), slot(li_, li_[0]), slot(z, z[0]), slot(rs, 0)
        ):
            args += [ci, ti, li, max(li.stride(0), 1), zi, max(zi.stride(0), 1), ri]
        _lowrank_z_kernel[(rows_z, len(ms), t_blocks)](
            *args, BLOCK_T=block_t, BLOCK_K=cfg.block_k_z, BLOCK_R=cfg.block_r, num_warps=4
        )

    rows = cfg.block_k * cfg.iters
    chunks = triton.cdiv(n, rows) + max(triton.cdiv(r, rows) for r in rs)
    args = [x, x.stride(0), T, n]
    has_bias = []
    for i in range(MAX_PROJ):
        j = min(i, len(ms) - 1)  # unused slots repeat the last projection; their tiles are 0
        b = bias[j] if i < len(ms) else None
        has_bias.append(b is not None)
        args += [
            w_[j], w_[j].stride(0), c[j], tau[j], lo_[j], max(lo_[j].stride(0), 1), z[j], max(z[j].stride(0), 1),
            ws[j], cnt[j], b if b is not None else w_[j], outs[j], outs[j].stride(0), ms[j], rs[j],
            tiles[j] if i < len(ms) else 0,
        ]
    _gemv_kernel[(chunks, sum(tiles), t_blocks)](
        *args,
        BIAS0=has_bias[0], BIAS1=has_bias[1], BIAS2=has_bias[2],
        BLOCK_T=block_t, BLOCK_K=cfg.block_k, BLOCK_M=cfg.block_m, ITERS=cfg.iters,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return outs


def sparse_linear(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, out=None) -> torch.Tensor:
    """Triton implementation of ``rsparse::sparse_linear``."""
    outs = None if out is None else [out]
    return sparse_linear_multi(x, [weight_t], [c], [tau], [lowrank_in], [lowrank_out], [bias], outs)[0]
