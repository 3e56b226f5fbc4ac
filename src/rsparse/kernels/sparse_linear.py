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

import dataclasses
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_PROJ = 3  # q/k/v is the widest group a decoder layer has


@triton.jit
def _dot_acc(coef, w, acc, FP32: tl.constexpr):
    # acc [16, BLOCK_M] += coef [16, BLOCK_K] @ w [BLOCK_K, BLOCK_M] on tensor cores.  coef
    # rows are masked inputs (exact in w's dtype) or fp32 z, split as hi + lo in w's dtype
    # so the low-rank coefficients keep ~16 more bits than one bf16 rounding.
    if FP32:
        acc = tl.dot(coef, w.to(tl.float32), acc, input_precision="ieee")
    else:
        hi = coef.to(w.dtype)
        acc = tl.dot(hi, w, acc)
        acc = tl.dot((coef - hi.to(tl.float32)).to(w.dtype), w, acc)
    return acc


@triton.jit
def _w_rows(acc, x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, w_ptr, stride_w, n, k0, offs_m, m_ok,
            USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < n
    cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
    if USE_DOT:
        xf = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
        active = (tl.abs(xf) * cv[None, :] > tau) & t_ok[:, None] & k_ok[None, :]
        row_on = tl.max(active.to(tl.int32), axis=0) > 0  # a row is read if any token keeps it
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=row_on[:, None] & m_ok[None, :], other=0.0)
        coef = tl.where(active, xf, 0.0)
        if FP32:
            acc = tl.dot(coef, w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(coef.to(w.dtype), w, acc)  # masked inputs are exact in w's dtype
    else:  # one token: elementwise FMAs into [BLOCK_K, BLOCK_M], reduced once at the end
        xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        active = (tl.abs(xf) * cv > tau) & k_ok
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=active[:, None] & m_ok[None, :], other=0.0)
        acc += tl.where(active, xf, 0.0)[:, None] * w.to(tl.float32)
    return acc


@triton.jit
def _lr_rows(acc, z_ptr, stride_z, offs_t, t_ok, lo_ptr, stride_lo, r, k0, offs_m, m_ok,
             USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < r
    w = tl.load(lo_ptr + offs_k[:, None] * stride_lo + offs_m[None, :], mask=k_ok[:, None] & m_ok[None, :], other=0.0)
    if USE_DOT:
        z = tl.load(z_ptr + offs_t[:, None] * stride_z + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _dot_acc(z, w, acc, FP32)
    else:
        z = tl.load(z_ptr + offs_k, mask=k_ok, other=0.0)
        acc += z[:, None] * w.to(tl.float32)
    return acc


@triton.jit
def _z_part(
    x_ptr, stride_xt, c_ptr, tau_ptr, li_ptr, stride_li, z_ptr, stride_z,
    T, n, r, pid_k, pid_r, pid_t,
    USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr, ITERS: tl.constexpr,
):
    if pid_r * BLOCK_R < r:
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = offs_r < r
        tau = tl.load(tau_ptr)
        if USE_DOT:
            acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_K, BLOCK_R], dtype=tl.float32)
        for i in tl.static_range(ITERS):
            offs_k = (pid_k * ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = offs_k < n
            cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
            v = tl.load(li_ptr + offs_k[:, None] * stride_li + offs_r[None, :], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
            if USE_DOT:
                xf = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                coef = tl.where(tl.abs(xf) * cv[None, :] > tau, 0.0, xf)  # the inactive channels
                if FP32:
                    acc = tl.dot(coef, v.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(coef.to(v.dtype), v, acc)
            else:
                xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
                coef = tl.where(tl.abs(xf) * cv > tau, 0.0, xf)
                acc += coef[:, None] * v.to(tl.float32)
        if USE_DOT:
            part = acc
        else:
            part = tl.sum(acc, axis=0)[None, :]
        tl.atomic_add(z_ptr + offs_t[:, None] * stride_z + offs_r[None, :], part, mask=t_ok[:, None] & r_ok[None, :], sem="relaxed")


@triton.jit
def _lowrank_z_kernel(
    x_ptr, stride_xt, T, n, t_blocks,
    c0, tau0, li0, sli0, z0, sz0, r0,
    c1, tau1, li1, sli1, z1, sz1, r1,
    c2, tau2, li2, sli2, z2, sz2, r2,
    USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr, ITERS: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_r = tl.program_id(1)
    proj = tl.program_id(2) // t_blocks
    pid_t = tl.program_id(2) % t_blocks
    if proj == 0:
        _z_part(x_ptr, stride_xt, c0, tau0, li0, sli0, z0, sz0, T, n, r0, pid_k, pid_r, pid_t, USE_DOT, FP32, BLOCK_T, BLOCK_K, BLOCK_R, ITERS)
    elif proj == 1:
        _z_part(x_ptr, stride_xt, c1, tau1, li1, sli1, z1, sz1, T, n, r1, pid_k, pid_r, pid_t, USE_DOT, FP32, BLOCK_T, BLOCK_K, BLOCK_R, ITERS)
    else:
        _z_part(x_ptr, stride_xt, c2, tau2, li2, sli2, z2, sz2, T, n, r2, pid_k, pid_r, pid_t, USE_DOT, FP32, BLOCK_T, BLOCK_K, BLOCK_R, ITERS)


@triton.jit
def _gemv_part(
    x_ptr, stride_xt, T, n, pid_k, tile, pid_t,
    w_ptr, stride_w, c_ptr, tau_ptr, lo_ptr, stride_lo, z_ptr, stride_z,
    ws_ptr, cnt_ptr, bias_ptr, out_ptr, stride_o, m, r, n_tiles,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, FP32: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, ITERS: tl.constexpr,
):
    rows = BLOCK_K * ITERS
    n_chunks_w = tl.cdiv(n, rows)
    n_chunks = n_chunks_w + tl.cdiv(r, rows)
    if pid_k < n_chunks:  # fixed grid: the programs past this projection's rows exit
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m
        if USE_DOT:
            acc = tl.zeros([BLOCK_T, BLOCK_M], dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_K, BLOCK_M], dtype=tl.float32)
        if pid_k < n_chunks_w:
            tau = tl.load(tau_ptr)
            k0 = pid_k * rows
            if UNROLL:
                for i in tl.static_range(ITERS):
                    acc = _w_rows(acc, x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, w_ptr, stride_w, n, k0 + i * BLOCK_K,
                                  offs_m, m_ok, USE_DOT, FP32, BLOCK_K)
            else:
                for i in range(ITERS):
                    acc = _w_rows(acc, x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, w_ptr, stride_w, n, k0 + i * BLOCK_K,
                                  offs_m, m_ok, USE_DOT, FP32, BLOCK_K)
        else:
            k0 = (pid_k - n_chunks_w) * rows
            for i in tl.static_range(ITERS):
                acc = _lr_rows(acc, z_ptr, stride_z, offs_t, t_ok, lo_ptr, stride_lo, r, k0 + i * BLOCK_K,
                               offs_m, m_ok, USE_DOT, FP32, BLOCK_K)
        if USE_DOT:
            part = acc
        else:
            part = tl.sum(acc, axis=0)[None, :]
        o_mask = t_ok[:, None] & m_ok[None, :]
        ws_ptrs = ws_ptr + offs_t[:, None] * m + offs_m[None, :]
        tl.atomic_add(ws_ptrs, part, mask=o_mask, sem="relaxed")
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
    USE_DOT: tl.constexpr, FP32: tl.constexpr, UNROLL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, ITERS: tl.constexpr,
):
    pid_k = tl.program_id(0)
    tile = tl.program_id(1)  # output tiles of projection 0, then 1, then 2
    pid_t = tl.program_id(2)
    if tile < tiles0:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile, pid_t,
                   w0, sw0, c0, tau0, lo0, slo0, z0, sz0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0,
                   BIAS0, USE_DOT, FP32, UNROLL, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)
    elif tile < tiles0 + tiles1:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile - tiles0, pid_t,
                   w1, sw1, c1, tau1, lo1, slo1, z1, sz1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1,
                   BIAS1, USE_DOT, FP32, UNROLL, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)
    else:
        _gemv_part(x_ptr, stride_xt, T, n, pid_k, tile - tiles0 - tiles1, pid_t,
                   w2, sw2, c2, tau2, lo2, slo2, z2, sz2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2,
                   BIAS2, USE_DOT, FP32, UNROLL, BLOCK_T, BLOCK_K, BLOCK_M, ITERS)


@dataclass(frozen=True)
class Config:
    """Tile sizes of one launch; `choose_config` picks them from shapes only."""

    block_k: int = 32
    block_m: int = 256
    iters: int = 4
    num_warps: int = 4
    num_stages: int = 1
    unroll: bool = True
    block_k_z: int = 32
    iters_z: int = 4
    block_r: int = 64


_OVERRIDE: dict[str, Config] = {}


def set_config(config: Config | None, kind: str = "gemv1") -> None:
    """Force the tile sizes of every launch of ``kind`` (``"gemv1"``: one token,
    ``"dot"``: 2 to 16 tokens); for benchmarks that sweep configurations."""
    if config is None:
        _OVERRIDE.pop(kind, None)
    else:
        _OVERRIDE[kind] = config


def choose_config(n: int, m_total: int, use_dot: bool, itemsize: int) -> Config:
    """Tile sizes of a launch (fixed per kind today; the arguments leave room for shape rules)."""
    kind = "dot" if use_dot else "gemv1"
    if kind in _OVERRIDE:
        return _OVERRIDE[kind]
    # The best of the tile sweeps of benchmarks/kernels.py on an H200 (benchmarks/NOTES.md),
    # the configuration the committed table ran with: wide rows (2 KB of bf16 per active
    # channel) pay more than deep tiles.
    if use_dot:
        return Config(block_k=32, block_m=256, iters=4, num_warps=4, num_stages=3, unroll=False)
    return Config(block_k=8, block_m=1024, iters=8, num_warps=4, num_stages=1, unroll=True)


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
    use_dot = T > 1
    block_t = 16 if use_dot else 1  # tl.dot needs 16 rows on the GPU
    t_blocks = triton.cdiv(T, block_t)
    # fp32 dots for fp32 inputs, and under the interpreter for bf16 (numpy has no bf16 dot).
    fp32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    cfg = choose_config(n, sum(ms), use_dot, x.element_size())
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
        args = [x, x.stride(0), T, n, t_blocks]
        for ci, ti, li, zi, ri in zip(
            slot(c, c[0]), slot(tau, tau[0]), slot(li_, li_[0]), slot(z, z[0]), slot(rs, 0)
        ):
            args += [ci, ti, li, max(li.stride(0), 1), zi, max(zi.stride(0), 1), ri]
        grid = (triton.cdiv(n, cfg.block_k_z * cfg.iters_z), triton.cdiv(max(rs), cfg.block_r), len(ms) * t_blocks)
        _lowrank_z_kernel[grid](
            *args, USE_DOT=use_dot, FP32=fp32, BLOCK_T=block_t, BLOCK_K=cfg.block_k_z, BLOCK_R=cfg.block_r,
            ITERS=cfg.iters_z, num_warps=4,
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
        BIAS0=has_bias[0], BIAS1=has_bias[1], BIAS2=has_bias[2], USE_DOT=use_dot, FP32=fp32, UNROLL=cfg.unroll,
        BLOCK_T=block_t, BLOCK_K=cfg.block_k, BLOCK_M=cfg.block_m, ITERS=cfg.iters,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return outs


def sparse_linear(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, out=None) -> torch.Tensor:
    """Triton implementation of ``rsparse::sparse_linear``."""
    outs = None if out is None else [out]
    return sparse_linear_multi(x, [weight_t], [c], [tau], [lowrank_in], [lowrank_out], [bias], outs)[0]
