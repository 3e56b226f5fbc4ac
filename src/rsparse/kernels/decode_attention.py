"""Split-key attention of one decode token per query head, in one Triton launch.

The query heads that share a key/value head arrive packed as that head's queries (``q`` is
``[B, H_kv, G, D]``, `rsparse.bench.packed_sdpa_attention`'s view), so K and V are read once per
key/value head. SDPA's kernels give each (batch, key/value head) one program that walks the whole
static cache (8 programs for Llama-3-8B at batch 1, on a GPU of 132 multiprocessors; decode run
45's profile: 8.7 µs a layer). Here the keys are cut into ``splits`` ranges of ``BLOCK_N``-key
blocks, one program per range: each keeps its own running maximum, denominator and weighted sum
of values (the online softmax) and stores them; the last program of a key/value head to finish
(counted with an acq_rel atomic, as the split-K GEMV does) merges the ranges and writes the output.
Key blocks whose mask is all false are skipped without loading K or V: the unfilled end of a
static cache costs nothing.

Numerics follow the flash kernels SDPA uses on a GPU: scores and softmax in fp32, the
probabilities rounded to the value dtype for the weighted sum (fp32 inputs: IEEE fp32 products,
no TF32), fp32 accumulation, the output rounded once to nearest even.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from rsparse.kernels import compact_gemv as _compact
from rsparse.kernels.sparse_linear import _sm_count

__all__ = ["decode_attention"]

BLOCK_N = 64  # keys per block: one K and one V tile of 64 x D per step of a program
PROGRAMS_PER_SM = 2  # splits are chosen for about this many programs per multiprocessor
MAX_SPLITS = 64

_LOG2E = 1.4426950408889634
_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_ptr, stat_ptr, cnt_ptr,
    heads_kv, n_keys, splits, blocks_per_split, scale_log2,
    sq_b, sq_h, sq_g, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sm_b, sm_n, so_b, so_h, so_g,
    G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, DTYPE: tl.constexpr, DOT_FP32: tl.constexpr, PDL: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // heads_kv
    h = bh % heads_kv
    _compact.pdl_enter(PDL)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok = offs_g < G
    # Rows G..BLOCK_G-1 pad the queries to the dot's minimum of 16 rows; they are never stored.
    q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_g[:, None] * sq_g + offs_d[None, :], mask=g_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    first = split * blocks_per_split * BLOCK_N
    for i in range(blocks_per_split):
        n = first + i * BLOCK_N + offs_n
        ok = n < n_keys
        if HAS_MASK:
            ok = ok & (tl.load(mask_ptr + b * sm_b + n * sm_n, mask=ok, other=0) != 0)
        if tl.max(ok.to(tl.int32), 0) > 0:  # a block with no key to attend is not read
            k = tl.load(k_base + n[:, None] * sk_n + offs_d[None, :], mask=ok[:, None], other=0.0)
            if DOT_FP32:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(ok[None, :], s * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the block has a key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + n[:, None] * sv_n + offs_d[None, :], mask=ok[:, None], other=0.0)
            if DOT_FP32:  # p rounded to the value dtype as the tensor-core form rounds it
                pv = tl.dot(_compact.round_like(p, DTYPE), v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

    slot = (bh * splits + split) * G
    tl.store(part_ptr + (slot + offs_g[:, None]) * D + offs_d[None, :], acc, mask=g_ok[:, None])
    tl.store(stat_ptr + (slot + offs_g) * 2, m_i, mask=g_ok)
    tl.store(stat_ptr + (slot + offs_g) * 2 + 1, l_i, mask=g_ok)
    done = tl.atomic_add(cnt_ptr + bh, 1, sem="acq_rel")  # releases this range, acquires the others
    if done == splits - 1:
        m_all = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for s_ in range(splits):
            row = (bh * splits + s_) * G + offs_g
            m_all = tl.maximum(m_all, tl.load(stat_ptr + row * 2, mask=g_ok, other=float("-inf"), cache_modifier=".cg"))
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)  # a row with no key at all: output 0
        num = tl.zeros([BLOCK_G, D], tl.float32)
        den = tl.zeros([BLOCK_G], tl.float32)
        for s_ in range(splits):
            row = (bh * splits + s_) * G + offs_g
            m_s = tl.load(stat_ptr + row * 2, mask=g_ok, other=float("-inf"), cache_modifier=".cg")
            l_s = tl.load(stat_ptr + row * 2 + 1, mask=g_ok, other=0.0, cache_modifier=".cg")
            w = tl.where(m_s == float("-inf"), 0.0, tl.exp2(m_s - m_safe))
            part = tl.load(part_ptr + row[:, None] * D + offs_d[None, :], mask=g_ok[:, None], other=0.0,
                           cache_modifier=".cg")
            num += w[:, None] * part
            den += w * l_s
        out = num / tl.where(den == 0.0, 1.0, den)[:, None]
        tl.store(out_ptr + b * so_b + h * so_h + offs_g[:, None] * so_g + offs_d[None, :],
                 _compact.round_like(out, DTYPE).to(DTYPE), mask=g_ok[:, None])
        tl.atomic_xchg(cnt_ptr + bh, 0, sem="relaxed")  # the persistent counter is zero for the next call


_SCRATCH: dict[tuple, torch.Tensor] = {}
_COUNTERS: dict[tuple, torch.Tensor] = {}


def _workspace(device: torch.device, ranges: int, d: int, heads: int) -> tuple[torch.Tensor, ...]:
    """Partial sums ``[ranges, D]`` and (max, denominator) pairs in a scratch buffer, and one int32
    counter per (batch, key/value head) in a buffer of their own that is zero at rest (the last program
    of each head puts its counter back). Neither is the GEMV kernels' workspace, which must be zero at
    rest everywhere."""
    part, stat = _compact.cut_parts(_compact.persistent_zeros(_SCRATCH, device, ranges * (d + 2)), [ranges * d, ranges * 2])
    return part, stat, _compact.persistent_zeros(_COUNTERS, device, heads).view(torch.int32)


def split_plan(batch: int, heads_kv: int, n_keys: int, sm_count: int) -> tuple[int, int]:
    """``(splits, blocks_per_split)``: the key blocks of one (batch, key/value head) cut into
    ranges so that the launch has about `PROGRAMS_PER_SM` programs per multiprocessor, every range
    non-empty."""
    blocks = _compact.cdiv(max(n_keys, 1), BLOCK_N)
    wanted = max(1, min(blocks, MAX_SPLITS, _compact.cdiv(PROGRAMS_PER_SM * sm_count, batch * heads_kv)))
    per_split = _compact.cdiv(blocks, wanted)
    return _compact.cdiv(blocks, per_split), per_split


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of packed decode queries ``q`` ``[B, H_kv, G, D]`` on ``k``/``v`` ``[B, H_kv, L, D]``
    with a boolean key mask ``[B, 1, 1, L]`` (true: attend; None: every key); returns
    ``[B, H_kv, G, D]`` in ``q``'s dtype. Called by `rsparse.ops.decode_attention` (which validates).

    Example:

    ```python
    >>> out = decode_attention(q, k_cache, v_cache, mask, scale=head_dim ** -0.5)  # doctest: +SKIP
    ```
    """
    b, heads_kv, g, d = q.shape
    n_keys = k.shape[2]
    splits, per_split = split_plan(b, heads_kv, n_keys, _sm_count(q.device))
    part, stat, cnt = _workspace(q.device, b * heads_kv * splits * g, d, b * heads_kv)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, as the op's fake declares
    m = mask.view(torch.uint8) if mask is not None else q  # bool read as bytes; unused without a mask
    pdl = _compact.pdl_enabled(q.device)
    _decode_attention_kernel[(b * heads_kv, splits)](
        q, k, v, m, out, part, stat, cnt,
        heads_kv, n_keys, splits, per_split, float(scale) * _LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0) if mask is not None else 0, mask.stride(3) if mask is not None else 0,
        out.stride(0), out.stride(1), out.stride(2),
        G=g, BLOCK_G=max(16, triton.next_power_of_2(g)), D=d, BLOCK_N=BLOCK_N,
        HAS_MASK=mask is not None, DTYPE=_TL_DTYPE[q.dtype], PDL=pdl,
        # fp32 dots for fp32 inputs, and for bf16 under the interpreter (numpy has no bf16 product)
        DOT_FP32=q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"),
        num_warps=4, num_stages=2, **_compact.pdl_kwargs(pdl),
    )
    return out
