"""Two-launch batch-1 decode path: compact the active channels, then stream their rows.

Same computation and layout as `rsparse.kernels.sparse_linear` (``x`` ``[1, n]``,
``weight_t`` ``[n, m]`` row-major, ``lowrank_in`` ``[n, r]``, ``lowrank_out`` ``[r, m]``,
``c`` fp32 ``[n]``, ``tau`` 0-dim fp32), for one token and up to three projections that
share ``x``.  Run 4's one-launch kernel decides per row whether to load it, so at 50 %
sparsity half of every step's lanes are dead and the step chain (x and c loads -> mask ->
weight loads) repeats for rows that are never read.  Here the mask is built once:

* ``_compact_kernel`` (grid: channel blocks x r-blocks x projections): ``|x|*c > tau``,
  an exclusive prefix sum inside the block and one atomic per block on the projection's
  count give each active channel a slot; it writes the channel index and its fp32 ``x``
  there.  The order of the blocks is whatever the atomics give: the sum order is not
  deterministic anyway (fp32 atomics below).  With rank ``r > 0`` the same programs add
  ``V_rᵀ (x ⊙ (1 - m))`` over their block to ``z`` (fp32 atomics), reading only the
  inactive rows of ``V_r``.
* ``_gather_kernel`` (grid: about one wave): the rows of projection ``p`` form one virtual
  list of length ``r + count``: first the ``r`` rows of ``(U_r S_r)ᵀ`` with coefficients
  ``z``, then the active rows of ``Wᵀ`` with coefficients ``x_j``.  Each program takes one
  ``BLOCK_M``-column tile and a contiguous slice of that list (the slice is cut at run time
  from the count, so every program has work at any density), streams ``BLOCK_K`` full rows
  a step with no per-row mask, and issues the next step's row loads (and the indices of the
  step after) before multiplying the current one.  It adds its partial sums to an fp32
  workspace with one atomic per output element; the last program of a tile (acq_rel
  counter) adds the bias, writes the output and puts the workspace tile and its counter
  back to zero; the last tile to finish puts the counts and ``z`` back to zero.

One-launch form (``inline=True``, layers without rank): ``_inline_kernel`` has the gather's
grid, but each program owns a fixed chunk of about ``n / chunks`` channels, compacts that chunk
itself (mask, prefix sum, list into a scratch slot shared by the chunk's programs, which all
write the same values), then streams the active rows.  It saves the compaction launch but not
the imbalance between chunks: the program with the most active channels sets the time.  Given
``up``, its programs form the input ``F.silu(x) * up`` of a gated MLP's down projection as they
load their chunk (`silu_mul`, with eager PyTorch's roundings), so the product needs no launch.

Bytes per call: ``k*m + r*(n+m)`` weight elements (``k`` active channels; ``V_r`` only on
inactive rows), ``x``, ``c`` once, ``2*k`` index/value words written and read, and ``m``
fp32 partial sums per slice through L2 atomics.  FLOPs ``2*(k*m + r*(n+m))`` on CUDA cores.

Graph safety: grids depend on shapes only, the counts reach the second kernel as device
data, no host synchronisation.  The zeroed state (counts, ``z``, split-K sums, counters)
lives in one persistent fp32 buffer per device that every call leaves zero, so no memset
launch precedes the kernels; per call only a ``torch.empty`` of shape-dependent size (the
compacted lists).  Calls sharing the buffer must not run concurrently on two streams.  The
buffer is allocated outside the memory pool of any CUDA graph being warmed up
(`_zeros_outside_graph_pool`); a capture that finds it too small takes a zeroed buffer of its own.
"""

from __future__ import annotations

import functools
import os
import threading

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

MAX_PROJ = 3

# ---------------------------------------------------------------- programmatic dependent launch

# Programmatic dependent launch (Hopper and later): every rsparse launch is issued with the
# `launch_pdl` attribute, so the GPU may place its programs while the kernel before it still runs;
# each program first waits (`gdc_wait`) until that kernel has finished and its writes are
# visible, then lets the next launch be placed (`gdc_launch_dependents`).  Nothing but the layer's
# own constants (c, tau, a folded norm's weight: `sparse_linear.PREWAIT`, kernel run 82) is read
# before the wait, and nothing is written, so the order of results is that of plain launches; what
# the overlap can hide is the launch and placement of the next grid, and the first load of those
# constants, which in a decode step follows an rsparse launch four times per layer (o -> compaction
# -> gather -> down -> next q/k/v).
# Decode run 30 (H200, compiled, batch 1, Llama-3-8B shape): 0.5 3.479 -> 3.385 ms/token,
# 0.7 2.914 -> 2.883, 0.4 3.878 -> 3.808 (benchmarks/NOTES.md).
LAUNCH_PDL = True


@functools.lru_cache(maxsize=None)
def _capability(index: int | None) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_enabled(device: torch.device, requested: bool | None = None) -> bool:
    """Whether launches on ``device`` use programmatic dependent launch: ``requested`` (default
    `LAUNCH_PDL`), on a CUDA device of compute capability 9 or later, not under the interpreter."""
    on = LAUNCH_PDL if requested is None else requested
    return (bool(on) and device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
            and _capability(device.index) >= 9)


def pdl_kwargs(pdl: bool) -> dict:
    """The launch options of a kernel started with programmatic dependent launch."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """What a kernel launched with `launch_pdl` does before it touches anything the kernel ahead
    writes: wait for that kernel, then let the one after be placed.  Compiled out when ``PDL`` is
    false."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


# ---------------------------------------------------------------- folded RMSNorm and residual add


@triton.jit
def round_like(v, DTYPE: tl.constexpr):
    """``v`` (fp32) rounded to ``DTYPE`` to nearest even, returned as fp32.  bf16 is rounded on
    the bits: the interpreter's fp32 -> bf16 cast truncates, the GPU's rounds to nearest even."""
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return v.to(DTYPE).to(tl.float32)


@triton.jit
def rms_inv(h_ptr, n, eps, NORM_BLOCK: tl.constexpr):
    """``rsqrt(mean(h²) + eps)`` in fp32 over the ``n`` values at ``h_ptr`` (a decoder layer's
    residual stream, one token): every program that folds the norm computes it for itself, from L2."""
    offs = tl.arange(0, NORM_BLOCK)
    h = tl.load(h_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    return tl.math.rsqrt(tl.sum(h * h, axis=0) / n + eps)


@triton.jit
def normed_input(h, g, inv, DTYPE: tl.constexpr):
    """The RMSNorm output from fp32 residual values ``h`` and norm weights ``g``: ``g * (h * inv)``
    with Llama's roundings (``h * inv`` rounded to ``DTYPE``, the product with the weight rounded again).
    Callers load ``h``, ``g`` (and ``c``) before `rms_inv`'s whole-row load, so that all of them are one
    round trip to memory (decode run 28: the other order cost the q/k/v launch 1.4 µs)."""
    return round_like(g.to(tl.float32) * round_like(h * inv, DTYPE), DTYPE)


@triton.jit
def with_residual(y, res_ptr, offs, ok, DTYPE: tl.constexpr):
    """``residual + y`` for an fp32 output ``y``: ``y`` rounded to ``DTYPE`` as the store alone would
    round it, the sum formed in fp32 and rounded to nearest, as PyTorch adds two ``DTYPE`` tensors."""
    yo = y.to(DTYPE).to(tl.float32)
    return round_like(tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32) + yo, DTYPE)


@triton.jit
def _rms_norm_kernel(h_ptr, g_ptr, out_ptr, n, eps, NORM_BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    offs = tl.arange(0, NORM_BLOCK)
    ok = offs < n
    h = tl.load(h_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    inv = tl.math.rsqrt(tl.sum(h * h, axis=0) / n + eps)
    tl.store(out_ptr + offs, normed_input(h, g, inv, out_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, pdl: bool | None = None) -> torch.Tensor:
    """The RMSNorm of one token ``x`` ``[1, n]`` in one launch (as `rsparse.ops.rms_norm_reference`
    defines it), for a launch that takes ``norm_weight`` but does not fold it; PyTorch for batches."""
    from rsparse.ops.reference import rms_norm_reference

    n = x.shape[-1]
    if x.shape[0] != 1 or n > PRENORM_MAX_N:
        return rms_norm_reference(x, weight, eps)
    out = torch.empty_like(x)
    pdl = pdl_enabled(x.device, pdl)
    _rms_norm_kernel[(1,)](x, weight.contiguous(), out, n, float(eps), NORM_BLOCK=next_power_of_2(n), PDL=pdl,
                           num_warps=8, **pdl_kwargs(pdl))
    return out


# ---------------------------------------------------------------- launch 1: compaction + z


@triton.jit
def _compact_one(x_ptr, n, c_ptr, tau_ptr, li_ptr, stride_li, r, idx_ptr, xs_ptr, cnt_ptr, z_ptr, pid_n, pid_r,
                 r_progs, g_ptr, eps, HAS_LR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                 PRENORM: tl.constexpr, NORM_BLOCK: tl.constexpr, PDL: tl.constexpr, PREWAIT: tl.constexpr):
    offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < n
    # The layer's constants first: with PREWAIT they are read before the wait for the kernel ahead (no kernel
    # writes them; see sparse_linear.PREWAIT), so the mask waits on x alone.
    cv = tl.load(c_ptr + offs, mask=ok, other=0.0)
    tau = tl.load(tau_ptr)
    if PRENORM:
        g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    if PREWAIT:
        pdl_enter(PDL)
    xf = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if PRENORM:  # x_ptr holds the residual stream; the input is its RMSNorm
        xf = normed_input(xf, g, rms_inv(x_ptr, n, eps, NORM_BLOCK), x_ptr.dtype.element_ty)
    # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
    act = (tl.abs(xf) * cv > tau) & ok
    if pid_r == 0:
        a = act.to(tl.int32)
        pos = tl.cumsum(a, axis=0) - a  # exclusive prefix sum: slot inside the block
        base = tl.atomic_add(cnt_ptr, tl.sum(a, axis=0), sem="relaxed")
        tl.store(idx_ptr + base + pos, offs, mask=act)
        tl.store(xs_ptr + base + pos, xf, mask=act)
    if HAS_LR:
        inact = ok & (act == 0)
        coef = tl.where(inact, xf, 0.0)
        for rb in range(pid_r, tl.cdiv(r, BLOCK_R), r_progs):
            offs_r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
            r_ok = offs_r < r
            v = tl.load(li_ptr + offs[:, None] * stride_li + offs_r[None, :], mask=inact[:, None] & r_ok[None, :], other=0.0)
            part = tl.sum(coef[:, None] * v.to(tl.float32), axis=0)
            tl.atomic_add(z_ptr + offs_r, part, mask=r_ok, sem="relaxed")


@triton.jit
def _compact_kernel(
    x_ptr, n, r_progs,
    c0, tau0, li0, sli0, r0, idx0, xs0, cnt0, z0,
    c1, tau1, li1, sli1, r1, idx1, xs1, cnt1, z1,
    c2, tau2, li2, sli2, r2, idx2, xs2, cnt2, z2,
    g_ptr, eps,
    HAS_LR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PDL: tl.constexpr,
    PRENORM: tl.constexpr, NORM_BLOCK: tl.constexpr, PREWAIT: tl.constexpr,
):
    if not PREWAIT:  # else each program waits after reading its constants (`_compact_one`)
        pdl_enter(PDL)
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    p = tl.program_id(2)
    if p == 0:
        _compact_one(x_ptr, n, c0, tau0, li0, sli0, r0, idx0, xs0, cnt0, z0, pid_n, pid_r, r_progs, g_ptr, eps,
                     HAS_LR, BLOCK_N, BLOCK_R, PRENORM, NORM_BLOCK, PDL, PREWAIT)
    elif p == 1:
        _compact_one(x_ptr, n, c1, tau1, li1, sli1, r1, idx1, xs1, cnt1, z1, pid_n, pid_r, r_progs, g_ptr, eps,
                     HAS_LR, BLOCK_N, BLOCK_R, PRENORM, NORM_BLOCK, PDL, PREWAIT)
    else:
        _compact_one(x_ptr, n, c2, tau2, li2, sli2, r2, idx2, xs2, cnt2, z2, pid_n, pid_r, r_progs, g_ptr, eps,
                     HAS_LR, BLOCK_N, BLOCK_R, PRENORM, NORM_BLOCK, PDL, PREWAIT)


# ---------------------------------------------------------------- launch 2: gathered GEMV


@triton.jit
def _info(p, p_end, coef_ptr, idx_ptr, LIST: tl.constexpr, FRESH: tl.constexpr):
    # Row numbers and coefficients of list positions p (LIST) or of rows p themselves.
    ok = p < p_end
    if LIST and FRESH:
        # Lists this launch just wrote (`_inline_kernel`): read through L2, never a stale L1 line.
        j = tl.load(idx_ptr + p, cache_modifier=".cg")
        coef = tl.where(ok, tl.load(coef_ptr + p, cache_modifier=".cg"), 0.0)
    elif LIST:
        # Unmasked (so 16 bytes wide): the lists have 3 * BLOCK_K slack slots, and a slot past
        # the count holds garbage that only masked-off weight loads and a zeroed coefficient see.
        j = tl.load(idx_ptr + p)
        coef = tl.where(ok, tl.load(coef_ptr + p), 0.0)
    else:
        j = p
        coef = tl.load(coef_ptr + p, mask=ok, other=0.0)
    return j, coef, ok


@triton.jit
def _stream(acc, base_ptr, stride, coef_ptr, idx_ptr, p0, p1, offs_m, m_ok,
            LIST: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_K: tl.constexpr, FRESH: tl.constexpr):
    # acc += sum over positions [p0, p1) of coef[p] * base[row(p), offs_m], BLOCK_K rows a step.
    # Full rows, no per-row test: only the last step of a slice has masked-off rows.
    p = p0 + tl.arange(0, BLOCK_K)
    if PREFETCH == 2:
        # Two steps of rows in flight (steps s+1 and s+2) while step s multiplies.
        j, coef, ok = _info(p, p1, coef_ptr, idx_ptr, LIST, FRESH)
        w = tl.load(base_ptr + j[:, None] * stride + offs_m[None, :], mask=ok[:, None] & m_ok[None, :], other=0.0)
        j1, coef1, ok1 = _info(p + BLOCK_K, p1, coef_ptr, idx_ptr, LIST, FRESH)
        w1 = tl.load(base_ptr + j1[:, None] * stride + offs_m[None, :], mask=ok1[:, None] & m_ok[None, :], other=0.0)
        j2, coef2, ok2 = _info(p + 2 * BLOCK_K, p1, coef_ptr, idx_ptr, LIST, FRESH)
        for _ in range(p0, p1, BLOCK_K):
            w2 = tl.load(base_ptr + j2[:, None] * stride + offs_m[None, :], mask=ok2[:, None] & m_ok[None, :], other=0.0)
            p += BLOCK_K
            j3, coef3, ok3 = _info(p + 2 * BLOCK_K, p1, coef_ptr, idx_ptr, LIST, FRESH)
            acc += tl.sum(coef[:, None] * w.to(tl.float32), axis=0)
            w = w1
            coef = coef1
            w1 = w2
            coef1 = coef2
            j2 = j3
            coef2 = coef3
            ok2 = ok3
    elif PREFETCH == 1:
        # The rows of step s+1 and the indices of step s+2 are in flight while step s multiplies.
        j, coef, ok = _info(p, p1, coef_ptr, idx_ptr, LIST, FRESH)
        w = tl.load(base_ptr + j[:, None] * stride + offs_m[None, :], mask=ok[:, None] & m_ok[None, :], other=0.0)
        j1, coef1, ok1 = _info(p + BLOCK_K, p1, coef_ptr, idx_ptr, LIST, FRESH)
        for _ in range(p0, p1, BLOCK_K):
            w1 = tl.load(base_ptr + j1[:, None] * stride + offs_m[None, :], mask=ok1[:, None] & m_ok[None, :], other=0.0)
            p += BLOCK_K
            j2, coef2, ok2 = _info(p + BLOCK_K, p1, coef_ptr, idx_ptr, LIST, FRESH)
            acc += tl.sum(coef[:, None] * w.to(tl.float32), axis=0)
            w = w1
            coef = coef1
            j1 = j2
            coef1 = coef2
            ok1 = ok2
    else:
        for _ in range(p0, p1, BLOCK_K):
            j, coef, ok = _info(p, p1, coef_ptr, idx_ptr, LIST, FRESH)
            w = tl.load(base_ptr + j[:, None] * stride + offs_m[None, :], mask=ok[:, None] & m_ok[None, :], other=0.0)
            acc += tl.sum(coef[:, None] * w.to(tl.float32), axis=0)
            p += BLOCK_K
    return acc


@triton.jit
def _add_partial(acc, tile, chunks, ws_ptr, tcnt_ptr, bias_ptr, out_ptr, offs_m, m_ok, res_ptr,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, HAS_RES: tl.constexpr):
    # Split-K: add this program's partial sums to the tile's fp32 workspace; the last of the
    # tile's `chunks` programs writes the output and leaves workspace and counter at zero.
    tl.atomic_add(ws_ptr + offs_m, acc, mask=m_ok, sem="relaxed")
    # Every thread's partial sums land before the counter moves (release); the last program
    # of the tile sees all of them (acquire) and reads through L2 (volatile).
    tl.debug_barrier()
    done = tl.atomic_add(tcnt_ptr + tile, 1, sem="acq_rel")
    last = done == chunks - 1
    if last:
        y = tl.load(ws_ptr + offs_m, mask=m_ok, other=0.0, volatile=True)
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(tl.float32)
        if HAS_RES:  # a decoder layer's residual add, folded into the launch whose output it adds
            y = with_residual(y, res_ptr, offs_m, m_ok, out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_m, y.to(out_ptr.dtype.element_ty), mask=m_ok)
        # Leave the workspace as found: zero.  Every program of this tile has finished, and every
        # thread of this one has loaded its sums (the zero store may be laid out over other threads).
        tl.debug_barrier()
        tl.store(ws_ptr + offs_m, tl.zeros([BLOCK_M], dtype=tl.float32), mask=m_ok)
        tl.atomic_xchg(tcnt_ptr + tile, 0, sem="relaxed")
    return last


@triton.jit
def zero_state_after_last_tile(gcnt_ptr, total_tiles, state_ptr, state_len, BLOCK: tl.constexpr):
    # Count this tile done on the launch counter (acq_rel); the last tile of the launch puts the
    # state_len words from state_ptr (zeros of their own type) back to zero, so the persistent
    # workspace is zero for the next call without a memset launch.  Shared by both kernel files.
    g = tl.atomic_add(gcnt_ptr, 1, sem="acq_rel")
    if g == total_tiles - 1:
        for s in range(0, state_len, BLOCK):
            offs = s + tl.arange(0, BLOCK)
            tl.store(state_ptr + offs, tl.zeros([BLOCK], dtype=state_ptr.dtype.element_ty), mask=offs < state_len)


@triton.jit
def _gather_item(
    chunk, tile, chunks, w_ptr, stride_w, lo_ptr, stride_lo, r, idx_ptr, xs_ptr, cnt_ptr, z_ptr,
    ws_ptr, tcnt_ptr, bias_ptr, out_ptr, m, state_ptr, state_len, gcnt_ptr, total_tiles, res_ptr,
    HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, HAS_RES: tl.constexpr,
):
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m
    length = r + tl.load(cnt_ptr)
    steps = tl.cdiv(length, BLOCK_K)
    q0 = (chunk * steps // chunks) * BLOCK_K
    q1 = tl.minimum(((chunk + 1) * steps // chunks) * BLOCK_K, length)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_LR:
        # Two plain loops rather than one with a per-row pointer select: fewer registers.
        acc = _stream(acc, lo_ptr, stride_lo, z_ptr, idx_ptr, q0, tl.minimum(q1, r), offs_m, m_ok, False, PREFETCH, BLOCK_K, False)
        acc = _stream(acc, w_ptr, stride_w, xs_ptr, idx_ptr, tl.maximum(q0, r) - r, q1 - r, offs_m, m_ok, True, PREFETCH, BLOCK_K, False)
    else:
        # Slices start on a step boundary: index and coefficient loads can be 16-byte wide.
        q0 = tl.multiple_of(q0, BLOCK_K)
        acc = _stream(acc, w_ptr, stride_w, xs_ptr, idx_ptr, q0, q1, offs_m, m_ok, True, PREFETCH, BLOCK_K, False)
    if _add_partial(acc, tile, chunks, ws_ptr, tcnt_ptr, bias_ptr, out_ptr, offs_m, m_ok, res_ptr, HAS_BIAS, BLOCK_M,
                    HAS_RES):
        tl.debug_barrier()
        # The last tile of the launch: every program has read its count and z (each tile's
        # counter chain orders them before this point), so those go back to zero too.
        zero_state_after_last_tile(gcnt_ptr, total_tiles, state_ptr, state_len, BLOCK_M)


@triton.jit
def _gather_kernel(
    chunks, state_ptr, state_len, gcnt_ptr,
    w0, sw0, lo0, slo0, r0, idx0, xs0, cnt0, z0, ws0, tc0, b0, out0, m0, tiles0,
    w1, sw1, lo1, slo1, r1, idx1, xs1, cnt1, z1, ws1, tc1, b1, out1, m1, tiles1,
    w2, sw2, lo2, slo2, r2, idx2, xs2, cnt2, z2, ws2, tc2, b2, out2, m2, tiles2,
    res_ptr,
    BIAS0: tl.constexpr, BIAS1: tl.constexpr, BIAS2: tl.constexpr, HAS_LR: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr,
    RES0: tl.constexpr,
):
    pdl_enter(PDL)
    # Programs: slice-major, the tiles of projection 0, 1, 2 fastest, so one wave covers
    # every tile's first slices together.
    pid = tl.program_id(0)
    tiles = tiles0 + tiles1 + tiles2
    chunk = pid // tiles
    tile = pid % tiles
    if tile < tiles0:
        _gather_item(chunk, tile, chunks, w0, sw0, lo0, slo0, r0, idx0, xs0, cnt0, z0, ws0, tc0, b0, out0, m0,
                     state_ptr, state_len, gcnt_ptr, tiles, res_ptr, BIAS0, HAS_LR, PREFETCH, BLOCK_K, BLOCK_M, RES0)
    elif tile < tiles0 + tiles1:
        _gather_item(chunk, tile - tiles0, chunks, w1, sw1, lo1, slo1, r1, idx1, xs1, cnt1, z1, ws1, tc1, b1, out1, m1,
                     state_ptr, state_len, gcnt_ptr, tiles, res_ptr, BIAS1, HAS_LR, PREFETCH, BLOCK_K, BLOCK_M, False)
    else:
        _gather_item(chunk, tile - tiles0 - tiles1, chunks, w2, sw2, lo2, slo2, r2, idx2, xs2, cnt2, z2, ws2, tc2, b2,
                     out2, m2, state_ptr, state_len, gcnt_ptr, tiles, res_ptr, BIAS2, HAS_LR, PREFETCH, BLOCK_K, BLOCK_M,
                     False)


# ---------------------------------------------------------------- one launch: compaction inline


@triton.jit
def silu_mul(g, u, DTYPE: tl.constexpr, EXACT_EXP: tl.constexpr):
    """``F.silu(gate) * up`` in ``DTYPE`` as eager PyTorch forms it on the GPU: ``g / (1 + exp(-g))``
    in fp32 (libdevice's correctly rounded-to-nearest division and the CUDA ``expf``) rounded to
    ``DTYPE``, times ``u`` in fp32, rounded again.  The interpreter has no libdevice: numpy's exp."""
    if EXACT_EXP:
        e = libdevice.exp(-g)
    else:
        e = tl.exp(-g)
    s = round_like(tl.math.div_rn(g, 1.0 + e), DTYPE)
    return round_like(s * u, DTYPE)


@triton.jit
def _inline_item(
    chunk, tile, chunks, rows, x_ptr, u_ptr, n, c_ptr, tau_ptr, w_ptr, stride_w, idx_ptr, xs_ptr,
    ws_ptr, tcnt_ptr, bias_ptr, out_ptr, m, res_ptr,
    HAS_BIAS: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr, SILU_MUL: tl.constexpr, EXACT_EXP: tl.constexpr, HAS_RES: tl.constexpr,
    PDL: tl.constexpr, PREWAIT: tl.constexpr,
):
    # Compact this program's own channels [chunk * rows, +rows): mask, exclusive prefix sum,
    # index and fp32 x of every active channel into the chunk's list.  Every tile's program of
    # the chunk writes the same values to the same slots, so the lists need no cross-program
    # order; the barrier makes this program's stores visible to all its threads.
    k0 = chunk * rows
    offs = k0 + tl.arange(0, CHUNK)
    ok = (offs < k0 + rows) & (offs < n)
    cv = tl.load(c_ptr + offs, mask=ok, other=0.0)
    tau = tl.load(tau_ptr)
    if PREWAIT:  # c and tau read before the wait for the kernel ahead (no kernel writes them)
        pdl_enter(PDL)
    xf = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if SILU_MUL:  # x_ptr holds the gate, u_ptr the up projection: the input is silu(gate) * up
        xf = silu_mul(xf, tl.load(u_ptr + offs, mask=ok, other=0.0).to(tl.float32), x_ptr.dtype.element_ty, EXACT_EXP)
    # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
    act = (tl.abs(xf) * cv > tau) & ok
    a = act.to(tl.int32)
    pos = tl.cumsum(a, axis=0) - a
    count = tl.sum(a, axis=0)
    tl.store(idx_ptr + pos, offs, mask=act)
    tl.store(xs_ptr + pos, xf, mask=act)
    tl.debug_barrier()
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = _stream(acc, w_ptr, stride_w, xs_ptr, idx_ptr, 0, count, offs_m, m_ok, True, PREFETCH, BLOCK_K, True)
    _add_partial(acc, tile, chunks, ws_ptr, tcnt_ptr, bias_ptr, out_ptr, offs_m, m_ok, res_ptr, HAS_BIAS, BLOCK_M, HAS_RES)


@triton.jit
def _inline_kernel(
    x_ptr, u_ptr, n, chunks, rows, list_stride,
    c0, tau0, w0, sw0, idx0, xs0, ws0, tc0, b0, out0, m0, tiles0,
    c1, tau1, w1, sw1, idx1, xs1, ws1, tc1, b1, out1, m1, tiles1,
    c2, tau2, w2, sw2, idx2, xs2, ws2, tc2, b2, out2, m2, tiles2,
    res_ptr,
    BIAS0: tl.constexpr, BIAS1: tl.constexpr, BIAS2: tl.constexpr,
    PREFETCH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr,
    SILU_MUL: tl.constexpr, EXACT_EXP: tl.constexpr, RES0: tl.constexpr, PDL: tl.constexpr, PREWAIT: tl.constexpr,
):
    if not PREWAIT:  # else each program waits after reading its constants (`_inline_item`)
        pdl_enter(PDL)
    # Programs: chunk-major, the tiles of projection 0, 1, 2 fastest (as `_gather_kernel`).
    pid = tl.program_id(0)
    tiles = tiles0 + tiles1 + tiles2
    chunk = pid // tiles
    tile = pid % tiles
    lst = chunk * list_stride
    if tile < tiles0:
        _inline_item(chunk, tile, chunks, rows, x_ptr, u_ptr, n, c0, tau0, w0, sw0, idx0 + lst, xs0 + lst, ws0, tc0, b0, out0, m0,
                     res_ptr, BIAS0, PREFETCH, BLOCK_K, BLOCK_M, CHUNK, SILU_MUL, EXACT_EXP, RES0, PDL, PREWAIT)
    elif tile < tiles0 + tiles1:
        _inline_item(chunk, tile - tiles0, chunks, rows, x_ptr, u_ptr, n, c1, tau1, w1, sw1, idx1 + lst, xs1 + lst, ws1, tc1, b1,
                     out1, m1, res_ptr, BIAS1, PREFETCH, BLOCK_K, BLOCK_M, CHUNK, SILU_MUL, EXACT_EXP, False, PDL, PREWAIT)
    else:
        _inline_item(chunk, tile - tiles0 - tiles1, chunks, rows, x_ptr, u_ptr, n, c2, tau2, w2, sw2, idx2 + lst, xs2 + lst, ws2,
                     tc2, b2, out2, m2, res_ptr, BIAS2, PREFETCH, BLOCK_K, BLOCK_M, CHUNK, SILU_MUL, EXACT_EXP, False, PDL, PREWAIT)


# ---------------------------------------------------------------- host side

# One fp32 buffer per device, zero at the start and at the end of every call (see the
# module docstring).  A larger one replaces it when needed; old ones stay alive because
# captured CUDA graphs may still point at them.
_WORKSPACE: dict[tuple[str, int | None], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def _slots(k: int) -> list[tuple[int, bool]]:
    # The kernels take MAX_PROJ projection slots: (projection served, real?).  Unused slots
    # repeat the last projection with no tiles, so no program reaches them.
    return [(min(i, k - 1), i < k) for i in range(MAX_PROJ)]


def _zeros_outside_graph_pool(numel: int, device: torch.device) -> torch.Tensor:
    # torch.compile's CUDA graphs (cudagraph trees) route every allocation of the calling
    # thread into the graph's private pool while they warm up a graph, and a tensor from that
    # pool that outlives the graph is an error ("tensor(s) in the cudagraph pool not tracked
    # as outputs").  The routing is per thread, so a helper thread allocates the persistent
    # buffer from the ordinary pool; it waits for its zero fill before handing it over.
    box: list = []

    def allocate() -> None:
        try:
            with torch.cuda.device(device):
                buf = torch.zeros(numel, dtype=torch.float32, device=device)
                torch.cuda.current_stream(device).synchronize()
            box.append(buf)
        except BaseException as e:  # re-raised in the caller's thread
            box.append(e)

    worker = threading.Thread(target=allocate, name="rsparse-workspace")
    worker.start()
    worker.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host code (``triton.cdiv`` costs microseconds per host call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def persistent_zeros(store: dict, device: torch.device, numel: int) -> torch.Tensor:
    """A zeroed fp32 buffer of at least ``numel`` words, kept per device in ``store`` and grown by
    doubling (an outgrown buffer is kept alive: captured graphs may still use it)."""
    key = (device.type, device.index)
    buf = store.get(key)
    if buf is not None and buf.numel() >= numel:
        return buf[:numel]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # No persistent allocation inside a capture (its memory belongs to the graph): this
        # call's own zeroed buffer serves, a memset node in the graph.  Warm-up calls before a
        # capture normally size the persistent buffer first, so this is the rare path.
        return torch.zeros(numel, dtype=torch.float32, device=device)
    size = max(numel, 1 << 16, 2 * buf.numel() if buf is not None else 0)
    if device.type == "cuda":
        new = _zeros_outside_graph_pool(size, device)
    else:
        new = torch.zeros(size, dtype=torch.float32, device=device)
    if buf is not None:
        _RETIRED.append(buf)
    store[key] = new
    return new[:numel]


def _workspace(device: torch.device, numel: int) -> torch.Tensor:
    return persistent_zeros(_WORKSPACE, device, numel)


_VIEWS: dict[tuple, tuple[torch.Tensor, tuple[torch.Tensor, list[torch.Tensor]]]] = {}


def cut_parts(flat: torch.Tensor, sizes: list[int], int32: tuple[int, ...] = (),
              float64: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """``flat`` (fp32 words) cut into consecutive parts of ``sizes`` words, those whose index is in
    ``int32`` viewed as int32 and those in ``float64`` as fp64 (two words per value; even sizes and offsets)."""
    parts = flat.split(sizes)
    return [p.view(torch.int32) if i in int32 else p.view(torch.float64) if i in float64 else p
            for i, p in enumerate(parts)]


def workspace_parts(
    device: torch.device, sizes: list[int], int32: tuple[int, ...] = (), float64: tuple[int, ...] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The zeroed workspace (fp32, ``sum(sizes)`` words) and its consecutive parts of ``sizes``
    (`cut_parts`).  Cut once per persistent buffer: slicing anew on every call costs more host
    time than the launch it serves in eager decoding."""
    key = (device.type, device.index, tuple(sizes), int32, float64)
    hit = _VIEWS.get(key)
    if hit is not None and hit[0] is _WORKSPACE.get(key[:2]):
        return hit[1]
    flat = _workspace(device, sum(sizes))
    parts = flat, cut_parts(flat, sizes, int32, float64)
    persistent = _WORKSPACE.get(key[:2])
    if persistent is not None and flat.data_ptr() == persistent.data_ptr():  # not a capture's own buffer
        _VIEWS[key] = (persistent, parts)
    return parts


def compact_gemv(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    outs: list[torch.Tensor],
    sm_count: int,
    block_k: int = 8,
    block_m: int = 1024,
    programs_per_sm: int = 4,
    num_warps: int = 4,
    prefetch: int = 1,
    block_n: int = 128,
    block_r: int = 64,
    pdl: bool | None = None,
    inline: bool = False,
    up: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    residual: torch.Tensor | None = None,
    prewait: bool = False,
) -> list[torch.Tensor]:
    """One decode token through up to `MAX_PROJ` projections sharing ``x``; called by
    `rsparse.kernels.sparse_linear.sparse_linear_multi` (which validates and groups).

    Args:
        x (`torch.Tensor`): ``[1, n]``, unit stride along ``n``.
        weight_t, c, tau, lowrank_in, lowrank_out, bias (`list`): one entry per projection,
            layouts as in the module docstring.
        outs (`list[torch.Tensor]`): ``[1, m_p]`` outputs, every element written.
        sm_count (`int`): multiprocessors of the device (sizes the one-wave grid).
        block_k, block_m, programs_per_sm, num_warps: tiles of the gather launch.
        prefetch (`int`): steps of weight rows loaded ahead of the multiply (0, 1 or 2).
        block_n, block_r: channels and ``z`` columns per program of the compaction launch.
        pdl (`bool`, *optional*): programmatic dependent launch of every launch of the call
            (`pdl_enabled`; default `LAUNCH_PDL`); ignored off Hopper and under the interpreter.
        inline (`bool`): one launch (`_inline_kernel`): each program compacts its own fixed
            chunk of channels, then streams their rows.  Only without a low-rank path (its
            ``z`` needs every chunk first) and for chunks of at most `INLINE_MAX_CHUNK`
            channels; otherwise the two launches run.
        up (`torch.Tensor`, *optional*): ``[1, n]``; the input is then ``F.silu(x) * up`` (``x``
            the gate projection), formed inside the inline launch where it runs (no launch of
            its own), by PyTorch ahead of the two launches otherwise.
        norm_weight (`torch.Tensor`, *optional*): ``[n]``; the input is then the RMSNorm of ``x``
            (``x`` a residual stream, see `rsparse.ops.rms_norm_reference`), formed by the programs of
            the compaction launch (`PRENORM_MAX_N` channels at most; by PyTorch otherwise), with
            ``norm_eps``.
        residual (`torch.Tensor`, *optional*): ``[1, m]``, one projection only: the output is then
            ``residual + y``, added by the program that writes each output tile.
        prewait (`bool`): the compaction (or inline) launch reads ``c``, ``tau`` (and the norm's
            weight) before its wait for the kernel ahead (`rsparse.kernels.sparse_linear.PREWAIT`).

    Returns:
        `list[torch.Tensor]`: ``outs``.
    """
    T, n = x.shape
    if int(prefetch) not in (0, 1, 2):
        raise ValueError(f"prefetch must be 0, 1 or 2 steps, got {prefetch}")
    if T != 1:
        raise ValueError(f"compact_gemv serves one token, got x of shape {tuple(x.shape)}")
    k = len(weight_t)
    if not 1 <= k <= MAX_PROJ:
        raise ValueError(f"compact_gemv takes 1 to {MAX_PROJ} projections, got {k}")
    if residual is not None and (k != 1 or tuple(residual.shape) != (1, weight_t[0].shape[1])):
        raise ValueError(
            f"residual must be [1, m] for one projection, got {tuple(residual.shape)} for {k} projection(s)"
        )
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    if norm_weight is not None and up is not None:
        raise ValueError("compact_gemv takes either norm_weight (an RMSNorm input) or up (a SiLU product input), got both")
    prenorm = norm_weight is not None and n <= PRENORM_MAX_N
    if norm_weight is not None and not prenorm:
        x, norm_weight = rms_norm(x, norm_weight, norm_eps, pdl), None
    elif prenorm and norm_weight.stride(-1) != 1:
        norm_weight = norm_weight.contiguous()
    ms = [w.shape[1] for w in weight_t]
    rs = [li.shape[1] for li in lowrank_in]
    has_lr = any(rs)
    tiles = [cdiv(m, block_m) for m in ms]
    # Slices per tile: at most programs_per_sm programs per multiprocessor in all (rounded
    # down: one program past a full wave runs alone for a whole slice, measured +4 µs on
    # 4096->14336 with ncu), and no more slices than the longest list has steps.
    max_steps = cdiv(n + max(rs), block_k)
    chunks = max(1, min(max_steps, sm_count * programs_per_sm // sum(tiles)))

    pdl = pdl_enabled(x.device, pdl)
    if inline and not has_lr and not prenorm:  # (the compaction launch folds the norm, the inline one does not)
        rows = cdiv(n, chunks)
        if next_power_of_2(rows) <= INLINE_MAX_CHUNK:
            return _inline(x, weight_t, c, tau, bias, outs, tiles, cdiv(n, rows), rows,
                           block_k, block_m, num_warps, prefetch, up, residual=residual, pdl=pdl, prewait=prewait)
    if up is not None:
        x = torch.nn.functional.silu(x) * up

    # Persistent zeroed state: global tile counter, counts (k), z (k) | tile counters (k) | split-K sums (k).
    state_sizes = [1] * (1 + k) + rs
    sizes = state_sizes + tiles + ms
    flat, parts = workspace_parts(x.device, sizes, int32=(*range(1 + k), *range(1 + 2 * k, 1 + 3 * k)))
    gcnt, cnts, zs = parts[0], parts[1 : 1 + k], parts[1 + k : 1 + 2 * k]
    tcnt, ws = parts[1 + 2 * k : 1 + 3 * k], parts[1 + 3 * k :]
    state_len = sum(state_sizes)
    # The compacted lists: every slot a gather reads was written by the compaction launch.
    # Each list has 3 * block_k slack slots (the gather reads up to three steps ahead,
    # unmasked) and starts on a 256-byte boundary.
    ln = cdiv(n + 3 * block_k, 64) * 64
    lists = torch.empty(2 * k * ln, dtype=torch.float32, device=x.device)
    idx = [lists[2 * i * ln : (2 * i + 1) * ln].view(torch.int32) for i in range(k)]
    xs = [lists[(2 * i + 1) * ln : (2 * i + 2) * ln] for i in range(k)]

    li_ = [a if a.shape[1] == 0 or a.stride(1) == 1 else a.contiguous() for a in lowrank_in]
    lo_ = [a if a.shape[0] == 0 or a.stride(1) == 1 else a.contiguous() for a in lowrank_out]
    w_ = [w if w.stride(1) == 1 else w.contiguous() for w in weight_t]
    zs = [z if z.numel() else ws[i] for i, z in enumerate(zs)]  # never read when r = 0

    a_args = [x, n, 0]
    b_args = [chunks, flat, state_len, gcnt]
    has_bias = []
    for j, real in _slots(k):
        b = bias[j] if real else None
        has_bias.append(b is not None)
        a_args += [c[j], tau[j], li_[j], max(li_[j].stride(0), 1), rs[j], idx[j], xs[j], cnts[j], zs[j]]
        b_args += [w_[j], w_[j].stride(0), lo_[j], max(lo_[j].stride(0), 1), rs[j], idx[j], xs[j], cnts[j], zs[j],
                   ws[j], tcnt[j], b if b is not None else w_[j], outs[j], ms[j], tiles[j] if real else 0]
    r_progs = max(1, cdiv(max(rs), block_r)) if has_lr else 1
    a_args[2] = r_progs
    a_args += [norm_weight if prenorm else x, float(norm_eps)]
    _compact_kernel[(cdiv(n, block_n), r_progs, k)](
        *a_args, HAS_LR=has_lr, BLOCK_N=block_n, BLOCK_R=block_r, PDL=pdl, PRENORM=prenorm,
        NORM_BLOCK=next_power_of_2(n) if prenorm else 1, PREWAIT=bool(prewait), num_warps=4, **pdl_kwargs(pdl),
    )
    b_args.append(residual if residual is not None else outs[0])
    _gather_kernel[(chunks * sum(tiles),)](
        *b_args, BIAS0=has_bias[0], BIAS1=has_bias[1], BIAS2=has_bias[2], HAS_LR=has_lr,
        PREFETCH=int(prefetch), BLOCK_K=block_k, BLOCK_M=block_m, PDL=pdl, RES0=residual is not None,
        num_warps=num_warps, num_stages=1, **pdl_kwargs(pdl),
    )
    return outs


INLINE_MAX_CHUNK = 1024  # channels a program of `_inline_kernel` compacts in registers
PRENORM_MAX_N = 16384  # widest residual stream a program loads whole to fold the RMSNorm


def _inline(x, weight_t, c, tau, bias, outs, tiles, chunks, rows, block_k, block_m, num_warps, prefetch, up=None,
            residual=None, pdl=False, prewait=False):
    # One launch, no low-rank path: `chunks` programs per tile, each owning `rows` channels
    # (with `up`, the input silu(x) * up is formed by the programs as they load their chunk).
    n = x.shape[1]
    k = len(weight_t)
    ms = [w.shape[1] for w in weight_t]
    chunk_p2 = next_power_of_2(rows)
    # Persistent zeroed state: tile counters | split-K sums (each call leaves them zero).
    sizes = tiles + ms
    _, parts = workspace_parts(x.device, sizes, int32=tuple(range(k)))
    tcnt, ws = parts[:k], parts[k:]
    # Per projection and chunk, a list of up to `rows` active channels plus the 3 * block_k
    # slots `_stream` reads ahead unmasked; slots past a chunk's count are never used.
    stride = cdiv(chunk_p2 + 3 * block_k, 4) * 4
    lists = torch.empty(2 * k * chunks * stride, dtype=torch.float32, device=x.device)
    per = chunks * stride
    idx = [lists[2 * i * per : (2 * i + 1) * per].view(torch.int32) for i in range(k)]
    xs = [lists[(2 * i + 1) * per : (2 * i + 2) * per] for i in range(k)]
    w_ = [w if w.stride(1) == 1 else w.contiguous() for w in weight_t]
    args = [x, x if up is None else up, n, chunks, rows, stride]
    has_bias = []
    for j, real in _slots(k):
        b = bias[j] if real else None
        has_bias.append(b is not None)
        args += [c[j], tau[j], w_[j], w_[j].stride(0), idx[j], xs[j], ws[j], tcnt[j], b if b is not None else w_[j],
                 outs[j], ms[j], tiles[j] if real else 0]
    args.append(residual if residual is not None else outs[0])
    _inline_kernel[(chunks * sum(tiles),)](
        *args, BIAS0=has_bias[0], BIAS1=has_bias[1], BIAS2=has_bias[2], PREFETCH=int(prefetch),
        BLOCK_K=block_k, BLOCK_M=block_m, CHUNK=chunk_p2, SILU_MUL=up is not None, RES0=residual is not None,
        EXACT_EXP=os.environ.get("TRITON_INTERPRET") != "1", PDL=pdl, PREWAIT=bool(prewait), num_warps=num_warps,
        num_stages=1,
        **pdl_kwargs(pdl),
    )
    return outs
