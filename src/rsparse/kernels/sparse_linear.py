"""Triton kernels for ``rsparse::sparse_linear`` and ``rsparse::sparse_linear_multi``.

Layout assumed (DESIGN.md §4): ``x`` ``[T, n]`` (unit stride along ``n``), ``weight_t``
``[n, m]`` row-major, so input channel ``j`` owns the contiguous row ``weight_t[j]``;
``lowrank_in`` ``[n, r]`` and ``lowrank_out`` ``[r, m]`` row-major; ``c`` fp32 ``[n]``;
``tau`` a 0-dim fp32 tensor.  One launch serves up to three projections that share ``x``
(q/k/v, gate/up): every projection keeps its own tensors.

One launch, ``_splitk_kernel``, a split-K gather-GEMV over the rows of
``[Wᵀ ; (U_r S_r)ᵀ]``.  Its grid is about one wave (a few programs per multiprocessor,
`Config.programs_per_sm`): each program owns one output tile of ``BLOCK_M`` columns and a
long chunk of input channels, loops over them ``BLOCK_K`` rows at a time (recomputing the
mask ``|x|*c > tau`` of its rows, loading a weight row only when some token keeps it;
masked-off lanes issue no memory traffic; for one token the next step's ``x`` and ``c`` are
loaded while the current rows are in flight), reduces in registers and adds its partial sums
to an fp32 workspace with one atomic per output element.  The last program of a tile
(counted with an acq_rel atomic) adds the bias and writes the output in its dtype.

Low rank (rank ``r > 0``) in the same launch: ``z = V_rᵀ (x ⊙ (1 - m))`` ``[T, r]`` is
added up by its producers, which then count themselves done (release).  For one token the
producers are work items of their own, first in the grid (`Z_ITEMS`: one per
``Z_STEPS * BLOCK_KZ`` channels and ``BLOCK_R`` ranks, reading only the rows of ``V_r``
whose channel is inactive); for batches they are the weight items of the first
``ceil(r / BLOCK_R)`` tiles, before their first row.  The programs of the ``r`` virtual
rows ``(U_r S_r)ᵀ`` come last in the grid; they wait (acquire) until every ``z`` producer
has counted, then use ``z`` as their coefficients.  The producers have lower program ids,
so they are scheduled first and the wait cannot dead-lock; the interpreter runs programs
in order, so there it never waits.  For one token a low-rank item takes about as many rows
as a weight item is expected to load (its chunk times the layer's active share; kernel run 11).

Packed 4-bit factors (``lowrank_quant``, `rsparse.factor_quant`; constexpr ``PACKED``: 0 without them, 1-4 with
them, 2-4 forming some of one token's level floats from their bits, `PACKED_LEVELS`): the z and low-rank
items load byte row ``k // 2`` of ``lowrank_in`` / ``lowrank_out`` and take nibble ``k % 2`` (`_nibbles`); a
value is ``offset + step * q``, formed in registers in the sums' precision for one token, and for batches
applied around the tensor-core dot, which takes the levels ``q`` (exact in bf16/fp16) as they are.  Only this
launch reads packed factors (`choose_config` keeps them off the compact and inline paths).

One token can instead take a path of `rsparse.kernels.compact_gemv`: the two-launch
``"compact"`` (compaction, then a gathered split-K GEMV over only the active rows) or its
one-launch form ``"inline"``.  `choose_config` picks them for big layers by shape and the
layer's expected active fraction (rules and H200 figures above `choose_config`;
benchmarks/NOTES.md runs 6 and 8); ``set_config(Config(path=...), "gemv1")`` forces a path.

fp32 inputs: products and sums in fp64 (the constexpr ``ACC``), split-K sums and ``z`` in fp64
words of the workspace, ``z`` rounded to fp32 before its second phase, the output rounded once:
the reference's rule on the GPU (`rsparse.ops.reference.sums_in_fp64`), so the two agree to the
bit.  Such calls take the one-token code (fp64 FMAs, no ``tl.dot``) for every token, one token per
grid row (``PER_TOKEN``), never the compact or inline paths: fp32 is for checking, not for speed.

Graph safety: the grid depends only on shapes and the layer's active-share hint; no host
synchronisation.  The split-K sums, tile counters, ``z`` and its counters live in the
persistent per-device buffer of `rsparse.kernels.compact_gemv`, and every call leaves it zero
(the last program of each tile puts its sums back; with a low-rank path the last tile of the
launch puts ``z`` and the counters back), so no memset launch precedes the kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rsparse import eager_graphs
from rsparse.kernels import compact_gemv as _compact
from rsparse.kernels.compact_gemv import normed_input, rms_inv, with_residual, zero_state_after_last_tile
from rsparse.ops.reference import rms_norm_reference

MAX_PROJ = 3  # q/k/v is the widest group a decoder layer has
PERSISTENT_WORKSPACE = True  # False: a fresh zeroed workspace per call (benchmarks compare both)
ONE_WAVE_GRID = True  # at most programs_per_sm items per multiprocessor (False: the nearest count, kernel run 4)
# Low rank, one-token launches (kernel run 11, benchmarks/NOTES.md).  LOWRANK_ROWS: "chunk" gives a
# low-rank item as many rows of (U_r S_r)ᵀ as a weight item has channels (runs 4-10); "density" about
# as many as a weight item *loads* (its chunk times the layer's expected active share), so the dense
# low-rank rows are not the longest items; "density+wave" also shrinks the chunks until weight and
# low-rank items fit one wave together (measured slower: longer weight items).  Z_SKIP_ACTIVE: the z
# producers read a row of V_r only where the channel is inactive (at batch 4 nearly every row is
# inactive for some token, and the extra mask made the launch slower, so batches read every row).
LOWRANK_ROWS = "density"
# Other lengths for one token's low-rank items lost (benchmarks/ablations/packed_lr_rows.py, H100): 2, 4 and 8 times
# these rows with packed factors in kernel run 52 (about one memory round trip per extra step: the items run as a
# tail, waiting for z); 0.25 and 0.5 times, for both factor kinds, in kernel run 61 (0.5 won on packed gate+up by
# 3.7 % and lost on packed gate/up and down; with bf16 factors all within 1.1 %). The switches went after run 61.
# One token, packed factors: how a level q (0..15) becomes the float its FMA takes. "convert": `q.to(float32)`, an
# integer-to-float conversion (I2F, a quarter-rate unit on sm_90) per factor element. "bits": the bits 0x4B000000 | q
# are 2^23 + q, less 2^23 gives q (an OR and a full-rate add; the same values, so the same results). "biased": the
# bits 0x43000000 | q << 16 are 128 + q, taken as they are; each row's coefficient multiplies them (one FMA per
# element, against two), and the 128 comes back out once per row and step (as the batched launch's `_biased_levels`
# do; fp32 sums only, fp64 sums keep exact levels). "biased_rows": "biased" in the low-rank items' rows of
# (U_r S_r)ᵀ only, "convert" in the z items. One token, rho 0.8, 50 %, us (benchmarks/ablations/one_token_lowrank.py):
#   kernel run 59, H100, convert / bits / biased:      gate/up 35.86 / 35.76 / 34.29, down 39.02 / 38.99 / 41.22,
#                                                       gate+up 68.06 / 70.08 / 63.69, q/k/v + o 37.72 / 37.56 / 37.66;
#   kernel run 60, H200, convert / biased / biased_rows: gate/up 34.15 / 32.50 / 32.25, down 36.68 / 38.66 / 37.90,
#                                                       gate+up 64.75 / 63.06 / 63.01, q/k/v + o 36.89 / 36.92 / 36.85.
# Biased levels pay where the rank spends its elements in the low-rank rows (gate/up: 18.3 M of 21 M) and lose on
# down_proj on both cards, so launches whose input is at least twice their outputs take PACKED_LONG_INPUT_LEVELS.
# The split by shape was drawn after the two runs (the rule written before run 60 asked for all four cases).
# "byte_rows": "biased_rows", with one token's low-rank rows read a byte row at a time. Rows 2i and 2i+1 of the
# packed (U_r S_r)ᵀ share byte row i; "biased_rows" loads that byte once per row (`_nibbles`), then shifts and masks
# it per element. Compiled for sm_90 (Triton 3.6, tools/aot_check_splitk.py --loops), its loop issues 574
# instructions per 8-row step (64 elements a thread), about 9 per element; at 4 programs of 4 warps per
# multiprocessor a step then takes about 1.2 us of issue per scheduler, longer than its loads' round trip, so the
# packed low-rank tail is bound by issue (gate/up at 50 %, rho 0.8: 34.1 us with 4-bit factors against 27.2 with
# bf16 ones at the same bytes, kernel run 63). "byte_rows" loads each byte row once, forms both levels with one mask
# each (`_lr_byte_rows`) and keeps a sum per byte row until the item ends: 357 instructions per step, the same 96
# registers. "byte_rows_z" does the same in the z items, whose loop issues 541 instructions per step of 16 channels
# for one rank column a thread (about 34 per element, 5.2 M elements in gate/up at rho 0.8): each byte is loaded
# once for the two channels of its byte row (`_z_byte_rows`): 374 instructions per step, and the launch takes 80
# registers instead of 96. Kernel run 66 (H100, benchmarks/ablations/one_token_lowrank.py, one token, 50 %, rho
# 0.8, us, biased_rows / byte_rows / byte_rows_z): gate/up 34.82 / 33.51 / 33.64, gate+up 63.92 / 62.35 / 62.16,
# q/k/v + o 37.90 / 37.45 / 36.84; down (convert shipped) 39.33 / 41.38 / 40.88. By the rule written before the run
# (both byte-row settings beat the shipped one on every wide case; "byte_rows_z" is faster on two of three and in
# sum; the GPU switch test passed with both in the same call), wide launches take "byte_rows_z"; long inputs keep
# "convert". Not timed on an H200.
PACKED_LEVELS = "byte_rows_z"
PACKED_LONG_INPUT_LEVELS = "convert"
# The constexpr PACKED of a launch with packed factors, by setting.
_PACKED_LEVELS_CODE = {"convert": 1, "bits": 2, "biased": 3, "biased_rows": 4, "byte_rows": 5, "byte_rows_z": 6}
# 2-16 tokens with a rank: low-rank items take a weight item's rows divided by this. They wait for every z
# producer (the weight items), so they run as a tail after the weight rows; shorter items spread it wider.
# Batch 4, 50 %, rho 0.8 on an H100 (benchmarks/ablations/packed_lr_rows.py --batch 4, 1 -> 4): packed factors
# gate/up 77.6 -> 65.9 us, down 91.4 -> 77.8, gate+up 151.7 -> 120.9, q/k/v + o 74.3 -> 69.8; bf16 factors
# within 1.4 % either way (their rank is a quarter).
DOT_LOWRANK_ROWS_DIV = 4
Z_SKIP_ACTIVE = True
# Z_ITEMS: z gets items of its own, first in the grid (one per channel chunk and r-block), instead of
# a prologue of the weight items of the first ceil(r / block_r) tiles, which delays their rows.
Z_ITEMS = True
Z_STEPS = 4  # z items: channels per item = Z_STEPS * block_kz (0: a weight item's chunk)
# The same for 2-16 tokens (the tensor-core code). There the z producers are the weight items of the first
# ceil(r / block_r) tiles, before their rows: with packed factors' four-fold rank (gate/up at rho 0.8: 20 r-blocks of
# 64 over 28 tiles) most weight items start late, and the low-rank items wait for all of them. Timed in kernel runs
# 58-59 (benchmarks/ablations/dot_z_items.py): packed batches on big layers now take z items through their config
# (PACKED_DOT_Z_CONFIG), so this switch only forces them for every shape. It takes True, False, or "packed" /
# "plain" for launches with packed 4-bit / 16-bit factors only (`_switch_on`).
DOT_Z_ITEMS = False
# Kernel run 13, one token: a weight item loads the x and c of its next step while the rows of the
# current step are in flight, so a step's chain is the row loads alone, not x and c, then the mask,
# then the rows (XC_AHEAD; the same for z items was slower and was removed again).
XC_AHEAD = True
# Longest weight item (input channels) of a one-token split-K launch that forms a folded RMSNorm
# itself (`rsparse.fuse_norm`): q/k/v's 48-row items gain, gate/up's 232-row items lost (decode run 29).
PRENORM_MAX_ROWS = 64
# Load a folded norm's raw inputs two steps ahead (`_w_rows_ahead`'s NORM_AHEAD). Off until measured on the
# GPU (benchmarks/ablations/fold_ab.py, variant "two ahead").
PRENORM_AHEAD = False
# What a one-token split-K weight item reads before it waits for the kernel ahead (programmatic dependent launch;
# `_w_rows_ahead`). Under PDL the programs of a launch are placed as those of the launch before it leave, and wait
# there until it has ended; what they read before that wait must not be written by it, so only the layer's own
# constants qualify. 0: nothing (every read after the wait); 1: tau and the first step's c, so that the first mask
# waits on x alone (from L2) instead of c from memory; 2: also every weight row of the first step, masked by nothing
# (the inactive ones are read for nothing, in the previous launch's tail, when memory is otherwise idle), so that
# the first step's products wait on x alone. The kernels never write these constants; a PyTorch kernel that does
# (e.g. a new tau copied in) signals no early start, so the launch after it starts when it has ended. The compact
# and inline paths read c and tau (and a folded norm's weight) before the wait at any value above 0.
# Kernel run 82 (H100, one token, bf16, one_token_configs.py --switch-variant, same rounds; results/run82_h100/),
# us, 0 / 1 / 2: gate/up 25.36 / 25.08 / 25.60 at 50 % and 19.02 / 18.65 / 21.52 at 70 %; down 25.79 / 25.36 / 25.89
# (split-K) and 19.52 / 19.18 / 19.32 (inline); q/k/v + o 23.70 / 22.56 / 23.78 and 19.01 / 17.83 / 20.17; at rho 0.8
# and 50 % gate/up 27.02 / 26.92 / 28.18, down 28.98 / 29.14 / 30.32. Rule (8) of benchmarks/next_device_call.sh,
# written before the run, chose 1 (six-row sum 3.6 % below 0, no row more than 1 % above). Untimed on an H200.
PREWAIT = 1
# (z items that read their first step's c before the wait, Z_PREWAIT, were timed in kernel run 87, H100, rho 0.8:
# six-row sum 195.60 against 178.28 us, 123 registers against 109 in the offline sm_90 build; removed.)
# (Low-rank items that loaded their first rows of (U_r S_r)ᵀ before their waits, LOWRANK_FIRST_ROWS_EARLY, were timed in
# kernel run 83, H100, rho 0.8: six-row sum 179.92 against 179.32 us; removed.)


@triton.jit
def _dot_acc(coef, w, acc, FP32: tl.constexpr):
    # acc [16, BLOCK_M] += coef [16, BLOCK_K] @ w [BLOCK_K, BLOCK_M] on tensor cores.  coef
    # rows are fp32 z, split as hi + lo in w's dtype so the low-rank coefficients keep
    # ~16 more bits than one bf16 rounding.
    if FP32:
        acc = tl.dot(coef, w.to(tl.float32), acc, input_precision="ieee")
    else:
        hi = coef.to(w.dtype)
        acc = tl.dot(hi, w, acc)
        acc = tl.dot((coef - hi.to(tl.float32)).to(w.dtype), w, acc)
    return acc


@triton.jit
def _w_rows(acc, x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, w_ptr, stride_w, k0, k_end, offs_m, m_ok,
            USE_DOT: tl.constexpr, FP32: tl.constexpr, ACC2D: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
            EVERY_ROW: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < k_end
    cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
    if USE_DOT:
        xf = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
        active = (tl.abs(xf) * cv[None, :] > tau) & t_ok[:, None] & k_ok[None, :]
        if EVERY_ROW:  # Config.every_row: the row loads wait on no mask (rows no token keeps meet zeros)
            row_on = k_ok
        else:
            row_on = tl.max(active.to(tl.int32), axis=0) > 0  # a row is read if any token keeps it
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=row_on[:, None] & m_ok[None, :], other=0.0)
        coef = tl.where(active, xf, 0.0)
        if FP32:
            acc = tl.dot(coef, w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(coef.to(w.dtype), w, acc)  # masked inputs are exact in w's dtype
    else:  # one token: FMAs on CUDA cores
        xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        active = (tl.abs(xf) * cv > tau) & k_ok
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=active[:, None] & m_ok[None, :], other=0.0)
        prod = tl.where(active, xf, 0.0).to(ACC)[:, None] * w.to(ACC)
        if ACC2D:
            acc += prod
        else:
            acc += tl.sum(prod, axis=0)[None, :]
    return acc


@triton.jit
def _next_xc(x_ptr, c_ptr, g_ptr, nk, k_end, inv, PRENORM: tl.constexpr):
    # The c and (normed) fp32 x of the step at channels nk.
    n_ok = nk < k_end
    cv = tl.load(c_ptr + nk, mask=n_ok, other=0.0)
    xf = tl.load(x_ptr + nk, mask=n_ok, other=0.0).to(tl.float32)
    if PRENORM:
        xf = normed_input(xf, tl.load(g_ptr + nk, mask=n_ok, other=0.0), inv, x_ptr.dtype.element_ty)
    return cv, xf


@triton.jit
def _w_rows_ahead(x_ptr, n, c_ptr, tau, w_ptr, stride_w, k_start, k_end, offs_m, m_ok, g_ptr, eps,
                  BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PRENORM: tl.constexpr, NORM_BLOCK: tl.constexpr,
                  NORM_AHEAD: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr, PREWAIT: tl.constexpr):
    # One token, [1, BLOCK_M] partial sums of the rows k_start..k_end (kernel run 13): the next
    # step's x and c are loaded before this step's products, so they are in registers when its
    # mask is needed and the step waits for its rows alone.  PRENORM: x_ptr holds the residual
    # stream and the input is its RMSNorm (weight at g_ptr), the RMS from `rms_inv`.  NORM_AHEAD:
    # the raw inputs are loaded two steps ahead, and a step normalises those that arrived during the
    # previous one, so neither their loads nor the roundings stand between a step's mask and its
    # row loads (decode run 29: normalising the inputs just loaded cost about 0.2 us per step).
    # PREWAIT > 0: the launch's wait for the kernel ahead (under PDL) happens here, after the constants it names
    # (tau, loaded by the caller, c, and with PREWAIT 2 the first step's rows, none of them written by any kernel).
    acc = tl.zeros([1, BLOCK_M], dtype=ACC)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    k_ok = offs_k < k_end
    cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
    if PREWAIT >= 2:
        w_first = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=k_ok[:, None] & m_ok[None, :],
                          other=0.0)
    if PREWAIT > 0:
        _compact.pdl_enter(PDL)
    xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    inv = 1.0
    if PRENORM:
        g = tl.load(g_ptr + offs_k, mask=k_ok, other=0.0)
        if NORM_AHEAD:  # the raw inputs of the second step
            nk1 = offs_k + BLOCK_K
            ok1 = nk1 < k_end
            c_raw = tl.load(c_ptr + nk1, mask=ok1, other=0.0)
            x_raw = tl.load(x_ptr + nk1, mask=ok1, other=0.0)
            g_raw = tl.load(g_ptr + nk1, mask=ok1, other=0.0)
        inv = rms_inv(x_ptr, n, eps, NORM_BLOCK)
        xf = normed_input(xf, g, inv, x_ptr.dtype.element_ty)
    k_loop = k_start
    if PREWAIT >= 2:  # the first step, on the rows read before the wait (the host leaves NORM_AHEAD out)
        active = (tl.abs(xf) * cv > tau) & k_ok
        w = tl.where(active[:, None], w_first, 0.0)  # not 0 * w: an inf in an unread row must not show
        coef = tl.where(active, xf, 0.0)
        cv, xf = _next_xc(x_ptr, c_ptr, g_ptr, offs_k + BLOCK_K, k_end, inv, PRENORM)
        acc += tl.sum(coef.to(ACC)[:, None] * w.to(ACC), axis=0)[None, :]
        k_loop = k_start + BLOCK_K
    for k0 in range(k_loop, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        # Same roundings as rsparse.ops.active_mask: fp32 |x|, times fp32 c, against fp32 tau.
        active = (tl.abs(xf) * cv > tau) & k_ok
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=active[:, None] & m_ok[None, :], other=0.0)
        coef = tl.where(active, xf, 0.0)
        nk = offs_k + BLOCK_K
        if PRENORM and NORM_AHEAD:
            cv = c_raw
            xf = normed_input(x_raw.to(tl.float32), g_raw, inv, x_ptr.dtype.element_ty)
            nk2 = nk + BLOCK_K
            ok2 = nk2 < k_end
            c_raw = tl.load(c_ptr + nk2, mask=ok2, other=0.0)
            x_raw = tl.load(x_ptr + nk2, mask=ok2, other=0.0)
            g_raw = tl.load(g_ptr + nk2, mask=ok2, other=0.0)
        else:
            cv, xf = _next_xc(x_ptr, c_ptr, g_ptr, nk, k_end, inv, PRENORM)
        acc += tl.sum(coef.to(ACC)[:, None] * w.to(ACC), axis=0)[None, :]
    return acc


@triton.jit
def _biased_levels(q, DT: tl.constexpr):
    # Levels q (0..15) as DT values BIAS + q, written into the mantissa instead of converted: bits
    # 0x4300 | q are bf16 128 + q (7 mantissa bits), 0x6400 | q fp16 1024 + q (10 bits), exactly.
    # An integer-to-float conversion per element (I2F, a quarter-rate unit on sm_90) becomes one
    # OR; the bias leaves through the offset term (`_level_bias`). Batch 4 at rho 0.8 on an H100:
    # gate/up 82.7 -> 78.8 us, down 96.9 -> 92.0 (NOTES, thirty-third session).
    if DT == tl.bfloat16:
        v = (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        v = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    return v


@triton.jit
def _float_levels(q, ACC: tl.constexpr, PACKED: tl.constexpr):
    # Levels q (int32, 0..15) as exact ACC values for the one-token FMA code. PACKED 2 or 3 (`PACKED_LEVELS`):
    # bits 0x4B000000 | q are the fp32 value 2^23 + q, and subtracting 2^23 leaves q exactly, so an OR and an add
    # (full-rate units) replace the integer-to-float conversion (I2F, quarter rate on sm_90): the same values.
    # PACKED 4 ("biased_rows") converts, as 1 does, wherever it does not take biased levels.
    if PACKED == 2 or PACKED == 3:
        f = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    else:
        f = q.to(tl.float32)
    return f.to(ACC)


@triton.jit
def _biased_f32_levels(q):
    # Levels q (int32, 0..15) as the fp32 values 128 + q: bits 0x43000000 | q << 16, no conversion (PACKED 3; 4 in
    # the low-rank rows).
    return ((q << 16) | 0x43000000).to(tl.float32, bitcast=True)


@triton.jit
def _level_bias(DT: tl.constexpr):
    # The BIAS of `_biased_levels` in DT: offset + step * q = (offset - BIAS * step) + step * (BIAS + q).
    if DT == tl.bfloat16:
        b = 128.0
    else:
        b = 1024.0
    return b


@triton.jit
def _nibbles(ptr, rows, cols, stride, mask, RUNS8: tl.constexpr):
    # Levels 0..15 of 4-bit factors packed along their rows (`rsparse.factor_quant`): element
    # (k, j) sits in byte row k // 2, the low nibble for even k.  Two lanes load the same byte;
    # the cache serves the second, so memory still moves each byte once.
    # RUNS8 (one token's low-rank rows): the columns are declared contiguous in runs of 8 only (the
    # same values, written so that the compiler's contiguity analysis sees 8): it then loads 8 bytes
    # per lane, the layout of the 16-bit tiles, with every warp along the columns. With runs of 16
    # each warp covered 512 columns, two warps split the rows, and the rows' sum crossed warps
    # through shared memory at every step: 163 against 29 us on an H100 (NOTES, thirty-second session).
    # The tensor-core path keeps 16-byte runs (runs of 8 cost it 29 more registers on sm_90).
    if RUNS8:
        cols = (cols // 8) * 8 + cols % 8
    b = tl.load(ptr + (rows // 2)[:, None] * stride + cols[None, :], mask=mask, other=0)
    return (b.to(tl.int32) >> ((rows % 2) * 4)[:, None]) & 15


@triton.jit
def _byte_levels(b):
    # The two levels of packed bytes b (int32, 0..255) as fp32, for PACKED_LEVELS "byte_rows" / "byte_rows_z". Each
    # byte is placed at bits 15-22, the top of the mantissa under the exponent bits 0x43000000 (fp32 128): masking
    # its high nibble off leaves 0x43000000 | q << 15, the value 128 + q / 2; masking the low one off leaves
    # 0x43000000 | q << 19, which is 128 + 8 q. So each level takes one AND. Callers scale the low nibble's
    # coefficient by 2 and the high one's by 1/8 (both exact) and take out the biases 256 and 16.
    t = b * 32768 + 0x43000000
    return (t & 0x43078000).to(tl.float32, bitcast=True), (t & 0x43780000).to(tl.float32, bitcast=True)


@triton.jit
def _lr_byte_rows(acc_rows, acc_bias, z_ptr, lo_ptr, stride_lo, k0, k_end, offs_m, m_ok, lq_ptr, r,
                  BLOCK_K: tl.constexpr):
    # One token's packed low-rank rows k0 .. k0 + BLOCK_K (k0 even), PACKED_LEVELS "byte_rows": byte row i holds row
    # 2i in its low nibble and row 2i + 1 in its high one, and each byte is loaded once. acc_rows keeps one sum per
    # byte row and column (reduced once per item), acc_bias the per-step terms.
    offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    k_even = 2 * offs_b
    e_ok = k_even < k_end
    o_ok = k_even + 1 < k_end
    cols = (offs_m // 8) * 8 + offs_m % 8  # runs of 8 bytes per lane, every warp along the columns (`_nibbles`)
    b = tl.load(lo_ptr + offs_b[:, None] * stride_lo + cols[None, :], mask=e_ok[:, None] & m_ok[None, :],
                other=0).to(tl.int32)
    z_e = tl.load(z_ptr + k_even, mask=e_ok, other=0.0, volatile=True)
    z_o = tl.load(z_ptr + k_even + 1, mask=o_ok, other=0.0, volatile=True)
    off_e = tl.load(lq_ptr + 2 * r + k_even, mask=e_ok, other=0.0)
    off_o = tl.load(lq_ptr + 2 * r + k_even + 1, mask=o_ok, other=0.0)
    step_e = tl.load(lq_ptr + 3 * r + k_even, mask=e_ok, other=0.0)
    step_o = tl.load(lq_ptr + 3 * r + k_even + 1, mask=o_ok, other=0.0)
    low, high = _byte_levels(b)  # the even rows' coefficients carry 2, the odd rows' 1/8; biases 256 and 16
    acc_rows += (z_e * step_e * 2.0)[:, None] * low
    acc_rows += (z_o * step_o * 0.125)[:, None] * high
    acc_bias += tl.sum(z_e * (off_e - 256.0 * step_e) + z_o * (off_o - 16.0 * step_o), axis=0)
    return acc_rows, acc_bias


@triton.jit
def _lr_rows(acc, z_ptr, stride_z, offs_t, t_ok, lo_ptr, stride_lo, k0, k_end, offs_m, m_ok, lq_ptr, r,
             USE_DOT: tl.constexpr, FP32: tl.constexpr, ACC2D: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
             PACKED: tl.constexpr, DT: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < k_end
    w_ok = k_ok[:, None] & m_ok[None, :]
    if PACKED:  # row k of (U_r S_r)ᵀ is offset[k] + step[k] * q (rows 2 and 3 of the ranges)
        q = _nibbles(lo_ptr, offs_k, offs_m, stride_lo, w_ok, not USE_DOT)
        off = tl.load(lq_ptr + 2 * r + offs_k, mask=k_ok, other=0.0)
        step = tl.load(lq_ptr + 3 * r + offs_k, mask=k_ok, other=0.0)
    else:
        w = tl.load(lo_ptr + offs_k[:, None] * stride_lo + offs_m[None, :], mask=w_ok, other=0.0)
    if USE_DOT:
        z = tl.load(z_ptr + offs_t[:, None] * stride_z + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0, volatile=True)
        if PACKED:
            # z @ (offset + step * q) = (z * step) @ q + z @ offset: the levels are exact in the
            # activation dtype, so the tensor cores see no rounded factor.
            if FP32:  # fp32 dots (fp32 inputs; bf16 under the interpreter, which has no bf16 levels to cast to)
                acc = _dot_acc(z * step[None, :], q.to(tl.float32), acc, FP32)
            else:  # the levels biased (no conversion per element), the bias taken out of the offset
                acc = _dot_acc(z * step[None, :], _biased_levels(q, DT), acc, FP32)
                off = off - _level_bias(DT) * step
            acc += tl.sum(z * off[None, :], axis=1)[:, None]
        else:
            acc = _dot_acc(z, w, acc, FP32)
    else:
        z = tl.load(z_ptr + offs_k, mask=k_ok, other=0.0, volatile=True)
        if PACKED >= 3 and not ACC2D and ACC == tl.float32:  # "biased" and "biased_rows"
            # z * (offset + step * q) = (z * step) * (128 + q) + z * (offset - 128 * step): one FMA per element;
            # the second term is one number for the whole step (rows outside the item load z = 0)
            acc += tl.sum((z * step)[:, None] * _biased_f32_levels(q), axis=0)[None, :]
            acc += tl.sum(z * (off - 128.0 * step), axis=0)
        else:
            if PACKED:  # formed in the sums' precision, as the reference forms it
                w = off.to(ACC)[:, None] + step.to(ACC)[:, None] * _float_levels(q, ACC, PACKED)
            # z rounded to fp32 (a no-op unless z was summed in fp64), as the reference rounds it.
            prod = z.to(tl.float32).to(ACC)[:, None] * w.to(ACC)
            if ACC2D:
                acc += prod
            else:
                acc += tl.sum(prod, axis=0)[None, :]
    return acc


@triton.jit
def _z_byte_rows(x_ptr, c_ptr, tau, li_ptr, stride_li, k_start, k_end, offs_r, r_ok, off, step,
                 BLOCK_KZ: tl.constexpr, BLOCK_R: tl.constexpr, Z_SKIP_ACTIVE: tl.constexpr):
    # One token's share of z over channels k_start .. k_end (k_start even) for the ranks offs_r, PACKED_LEVELS
    # "byte_rows_z": byte row i of the packed V_r holds channel 2i in its low nibble and 2i + 1 in its high one, so
    # each byte is loaded once for both channels (levels from `_byte_levels`; the coefficients carry 2 and 1/8).
    # Returns z's share, [1, BLOCK_R].
    acc = tl.zeros([BLOCK_KZ // 2, BLOCK_R], dtype=tl.float32)
    sum_e = tl.zeros([BLOCK_KZ // 2], dtype=tl.float32)  # the even and odd channels' inactive inputs
    sum_o = tl.zeros([BLOCK_KZ // 2], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_KZ):
        offs_b = k0 // 2 + tl.arange(0, BLOCK_KZ // 2)
        k_even = 2 * offs_b
        e_ok = k_even < k_end
        o_ok = k_even + 1 < k_end
        x_e = tl.load(x_ptr + k_even, mask=e_ok, other=0.0).to(tl.float32)
        x_o = tl.load(x_ptr + k_even + 1, mask=o_ok, other=0.0).to(tl.float32)
        c_e = tl.load(c_ptr + k_even, mask=e_ok, other=0.0)
        c_o = tl.load(c_ptr + k_even + 1, mask=o_ok, other=0.0)
        coef_e = tl.where(tl.abs(x_e) * c_e > tau, 0.0, x_e)  # the inactive channels
        coef_o = tl.where(tl.abs(x_o) * c_o > tau, 0.0, x_o)
        row_on = e_ok
        if Z_SKIP_ACTIVE:  # read a byte row only where one of its channels is inactive (a zero input adds nothing)
            row_on = (coef_e != 0.0) | (coef_o != 0.0)
        b = tl.load(li_ptr + offs_b[:, None] * stride_li + offs_r[None, :], mask=row_on[:, None] & r_ok[None, :],
                    other=0).to(tl.int32)
        low, high = _byte_levels(b)
        acc += (coef_e * 2.0)[:, None] * low
        acc += (coef_o * 0.125)[:, None] * high
        sum_e += coef_e
        sum_o += coef_o
    # coef @ (offset + step * q) = offset * S + step * (coef @ q), coef @ q = acc's sum less 256 S_even and 16 S_odd
    s_e = tl.sum(sum_e, axis=0)
    s_o = tl.sum(sum_o, axis=0)
    cq = tl.sum(acc, axis=0) - 256.0 * s_e - 16.0 * s_o
    return (off * (s_e + s_o) + step * cq)[None, :]


@triton.jit
def _z_part(x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, li_ptr, stride_li, z_ptr, stride_z, zcnt_ptr,
            k_start, k_end, r, rb_first, rb_step, lq_ptr,
            USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_KZ: tl.constexpr,
            BLOCK_R: tl.constexpr, Z_SKIP_ACTIVE: tl.constexpr, ACC: tl.constexpr, PACKED: tl.constexpr):
    # z[:, rb] += (x ⊙ inactive)[:, k_start:k_end] @ V_r[k_start:k_end, rb] for the r-blocks
    # rb_first, rb_first + rb_step, ...; then count this program as a finished producer.
    # PACKED: V_r's column j is offset[j] + step[j] * q (rows 0 and 1 of the ranges at lq_ptr).
    for rb in range(rb_first, tl.cdiv(r, BLOCK_R), rb_step):
        offs_r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = offs_r < r
        if PACKED:
            off = tl.load(lq_ptr + offs_r, mask=r_ok, other=0.0)
            step = tl.load(lq_ptr + r + offs_r, mask=r_ok, other=0.0)
            if USE_DOT or (PACKED == 3 and ACC == tl.float32):
                csum = tl.zeros([BLOCK_T], dtype=tl.float32)  # each token's sum of inactive inputs
        if PACKED == 6 and not USE_DOT and ACC == tl.float32:  # "byte_rows_z"
            part = _z_byte_rows(x_ptr, c_ptr, tau, li_ptr, stride_li, k_start, k_end, offs_r, r_ok, off, step,
                                BLOCK_KZ, BLOCK_R, Z_SKIP_ACTIVE)
        else:
            if USE_DOT:
                acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
            else:
                acc = tl.zeros([BLOCK_KZ, BLOCK_R], dtype=ACC)
            for k0 in range(k_start, k_end, BLOCK_KZ):
                offs_k = k0 + tl.arange(0, BLOCK_KZ)
                k_ok = offs_k < k_end
                cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
                if USE_DOT:  # batches read every row of V_r (nearly all are inactive for some token)
                    xf = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                    coef = tl.where(tl.abs(xf) * cv[None, :] > tau, 0.0, xf)  # the inactive channels
                    v_ok = k_ok[:, None] & r_ok[None, :]
                    if PACKED:
                        # coef @ (offset + step * q) = offset * sum(coef) + step * (coef @ q), with q
                        # exact in the activation dtype: the tensor cores see no rounded factor.
                        q = _nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)
                        csum += tl.sum(coef, axis=1)
                        if FP32:
                            acc = tl.dot(coef, q.to(tl.float32), acc, input_precision="ieee")
                        else:  # biased levels (`_biased_levels`); the bias leaves with the offset below
                            acc = tl.dot(coef.to(x_ptr.dtype.element_ty), _biased_levels(q, x_ptr.dtype.element_ty), acc)
                    else:
                        v = tl.load(li_ptr + offs_k[:, None] * stride_li + offs_r[None, :], mask=v_ok, other=0.0)
                        if FP32:
                            acc = tl.dot(coef, v.to(tl.float32), acc, input_precision="ieee")
                        else:
                            acc = tl.dot(coef.to(v.dtype), v, acc)
                else:
                    xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
                    active = tl.abs(xf) * cv > tau
                    coef = tl.where(active, 0.0, xf)
                    row_on = k_ok
                    if Z_SKIP_ACTIVE:  # one token: read a row of V_r only where the channel is inactive
                        row_on = row_on & (active == 0)
                    v_ok = row_on[:, None] & r_ok[None, :]
                    if PACKED == 3 and ACC == tl.float32:  # coef @ (128 + q) here, offset and bias applied below
                        q = _nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)
                        acc += coef[:, None] * _biased_f32_levels(q)
                        csum += tl.sum(coef, axis=0)
                    else:
                        if PACKED:  # formed in the sums' precision, as the reference forms it
                            q = _nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)
                            v = off.to(ACC)[None, :] + step.to(ACC)[None, :] * _float_levels(q, ACC, PACKED)
                        else:
                            v = tl.load(li_ptr + offs_k[:, None] * stride_li + offs_r[None, :], mask=v_ok, other=0.0)
                        acc += coef.to(ACC)[:, None] * v.to(ACC)
            if USE_DOT:
                part = acc
                if PACKED:
                    if not FP32:
                        off = off - _level_bias(x_ptr.dtype.element_ty) * step
                    part = off[None, :] * csum[:, None] + step[None, :] * acc
            else:
                part = tl.sum(acc, axis=0)[None, :]
                if PACKED == 3 and ACC == tl.float32:
                    # coef @ (offset + step * q) = offset * S + step * (coef @ (128 + q) - 128 * S), S = sum of coef
                    part = off[None, :] * csum[:, None] + step[None, :] * (part - 128.0 * csum[:, None])
        tl.atomic_add(z_ptr + offs_t[:, None] * stride_z + offs_r[None, :], part, mask=t_ok[:, None] & r_ok[None, :], sem="relaxed")
    tl.debug_barrier()
    tl.atomic_add(zcnt_ptr, 1, sem="release")


@triton.jit
def _finish(acc, offs_t, t_ok, offs_m, m_ok, m, ws_ptr, cnt_ptr, total, bias_ptr, out_ptr, stride_o,
            gcnt_ptr, state_len, all_tiles, res_ptr, stride_r,
            HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, ACC2D: tl.constexpr, RESET: tl.constexpr,
            RESET_STATE: tl.constexpr, BLOCK_M: tl.constexpr, HAS_RES: tl.constexpr, ACC: tl.constexpr):
    if USE_DOT:
        part = acc
    elif ACC2D:
        part = tl.sum(acc, axis=0)[None, :]
    else:
        part = acc
    o_mask = t_ok[:, None] & m_ok[None, :]
    ws_ptrs = ws_ptr + offs_t[:, None] * m + offs_m[None, :]
    tl.atomic_add(ws_ptrs, part, mask=o_mask, sem="relaxed")
    # Every thread's partial sums land before the counter moves (release), and the last
    # program sees all of them (acquire), reading through L2 (volatile).
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
    if done == total - 1:
        y = tl.load(ws_ptrs, mask=o_mask, other=0.0, volatile=True)
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0).to(ACC)[None, :]
        if HAS_RES:  # a decoder layer's residual add, folded into the launch whose output it adds
            y = with_residual(y, res_ptr, offs_t[:, None] * stride_r + offs_m[None, :], o_mask,
                                       out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs_t[:, None] * stride_o + offs_m[None, :], y.to(out_ptr.dtype.element_ty), mask=o_mask)
        if RESET:  # persistent workspace: leave this tile's sums and counter at zero
            # Every thread's load of the sums is done before any thread zeroes them: the compiler
            # may lay the zero store out over other threads than the load. Without this barrier the
            # second projection of batched gate+up launches read zeros at random (kernel run 16).
            tl.debug_barrier()
            tl.store(ws_ptrs, tl.zeros_like(y), mask=o_mask)
            tl.atomic_xchg(cnt_ptr, 0, sem="relaxed")
            if RESET_STATE:
                # The last tile of the launch (all projections, all token blocks): every low-rank
                # item has read z before its tile counted it, so z, the z counters and this
                # launch counter (the state, from gcnt on) go back to zero, and no memset launch
                # has to precede the next call (kernel run 12).
                # (int32 zeros from gcnt on: the same bits as fp32 zeros for the z part.)
                tl.debug_barrier()
                zero_state_after_last_tile(gcnt_ptr, all_tiles, gcnt_ptr, state_len, BLOCK_M)


@triton.jit
def _init_acc(BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
              USE_DOT: tl.constexpr, ACC2D: tl.constexpr, ACC: tl.constexpr):
    if USE_DOT:
        acc = tl.zeros([BLOCK_T, BLOCK_M], dtype=tl.float32)
    elif ACC2D:
        acc = tl.zeros([BLOCK_K, BLOCK_M], dtype=ACC)
    else:
        acc = tl.zeros([1, BLOCK_M], dtype=ACC)
    return acc


@triton.jit
def _weight_item(
    x_ptr, stride_xt, T, n, chunk, tile, pid_t, rows, chunks_w,
    w_ptr, stride_w, c_ptr, tau_ptr, li_ptr, stride_li, z_ptr, stride_z, zcnt_ptr,
    ws_ptr, cnt_ptr, bias_ptr, out_ptr, stride_o, m, r, n_tiles, lr_chunks, gcnt_ptr, state_len, all_tiles,
    g_ptr, eps, res_ptr, stride_r, lq_ptr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, FP32: tl.constexpr, ACC2D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KZ: tl.constexpr,
    BLOCK_R: tl.constexpr, RESET: tl.constexpr, Z_SKIP_ACTIVE: tl.constexpr, Z_ITEMS: tl.constexpr,
    RESET_STATE: tl.constexpr, XC_AHEAD: tl.constexpr, PRENORM: tl.constexpr, NORM_BLOCK: tl.constexpr,
    HAS_RES: tl.constexpr, NORM_AHEAD: tl.constexpr, ACC: tl.constexpr, PER_TOKEN: tl.constexpr,
    PACKED: tl.constexpr, EVERY_ROW: tl.constexpr, PDL: tl.constexpr, PREWAIT: tl.constexpr,
):
    if PER_TOKEN:  # one-token code, one token per grid row: its loads read row pid_t of x
        x_ptr += pid_t * stride_xt
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m
    tau = tl.load(tau_ptr)
    k_start = chunk * rows
    k_end = tl.minimum(k_start + rows, n)
    if (r > 0) and (not Z_ITEMS):  # with Z_ITEMS, z has items of its own
        if tile < tl.cdiv(r, BLOCK_R):
            _z_part(x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, li_ptr, stride_li, z_ptr, stride_z,
                    zcnt_ptr + pid_t, k_start, k_end, r, tile, n_tiles, lq_ptr, USE_DOT, FP32, BLOCK_T, BLOCK_KZ,
                    BLOCK_R, Z_SKIP_ACTIVE, ACC, PACKED)
    if XC_AHEAD:  # one token, 1-D partial sums only (the host checks; PRENORM only here, without rank)
        acc = _w_rows_ahead(x_ptr, n, c_ptr, tau, w_ptr, stride_w, k_start, k_end, offs_m, m_ok, g_ptr, eps,
                            BLOCK_K, BLOCK_M, PRENORM, NORM_BLOCK, NORM_AHEAD, ACC, PDL, PREWAIT)
    else:
        acc = _init_acc(BLOCK_T, BLOCK_K, BLOCK_M, USE_DOT, ACC2D, ACC)
        for k0 in range(k_start, k_end, BLOCK_K):
            acc = _w_rows(acc, x_ptr, stride_xt, offs_t, t_ok, c_ptr, tau, w_ptr, stride_w, k0, k_end, offs_m, m_ok,
                          USE_DOT, FP32, ACC2D, BLOCK_K, ACC, EVERY_ROW)
    _finish(acc, offs_t, t_ok, offs_m, m_ok, m, ws_ptr, cnt_ptr + pid_t * n_tiles + tile, chunks_w + lr_chunks,
            bias_ptr, out_ptr, stride_o, gcnt_ptr, state_len, all_tiles, res_ptr, stride_r,
            HAS_BIAS, USE_DOT, ACC2D, RESET, RESET_STATE, BLOCK_M, HAS_RES, ACC)


@triton.jit
def _lowrank_item(
    T, chunk, tile, pid_t, rows, chunks_w, chunks_z,
    lo_ptr, stride_lo, z_ptr, stride_z, zcnt_ptr,
    ws_ptr, cnt_ptr, bias_ptr, out_ptr, stride_o, m, r, n_tiles, lr_chunks, gcnt_ptr, state_len, all_tiles,
    res_ptr, stride_r, lq_ptr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, FP32: tl.constexpr, ACC2D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
    RESET: tl.constexpr, Z_ITEMS: tl.constexpr, RESET_STATE: tl.constexpr, HAS_RES: tl.constexpr,
    ACC: tl.constexpr, PER_TOKEN: tl.constexpr, PACKED: tl.constexpr, PDL: tl.constexpr, PREWAIT: tl.constexpr,
):
    if PREWAIT > 0:  # (else the kernel waited first thing)
        _compact.pdl_enter(PDL)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m
    # Wait until every z producer of this token block has counted itself (acquire).
    if Z_ITEMS:
        producers = chunks_z * tl.cdiv(r, BLOCK_R)
    else:
        producers = chunks_w * tl.minimum(n_tiles, tl.cdiv(r, BLOCK_R))
    seen = tl.atomic_add(zcnt_ptr + pid_t, 0, sem="acquire")
    while seen < producers:
        seen = tl.atomic_add(zcnt_ptr + pid_t, 0, sem="acquire")
    k_start = chunk * rows
    k_end = tl.minimum(k_start + rows, r)
    acc = _init_acc(BLOCK_T, BLOCK_K, BLOCK_M, USE_DOT, ACC2D, ACC)
    z_row = z_ptr
    if PER_TOKEN:  # one-token code, one token per grid row: its z is row pid_t
        z_row += pid_t * stride_z
    if PACKED >= 5 and not USE_DOT and not ACC2D and ACC == tl.float32:  # "byte_rows", "byte_rows_z"
        acc_rows = tl.zeros([BLOCK_K // 2, BLOCK_M], dtype=tl.float32)
        acc_bias = tl.zeros([], dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            acc_rows, acc_bias = _lr_byte_rows(acc_rows, acc_bias, z_row, lo_ptr, stride_lo, k0, k_end, offs_m, m_ok,
                                               lq_ptr, r, BLOCK_K)
        acc += tl.sum(acc_rows, axis=0)[None, :] + acc_bias
    else:
        for k0 in range(k_start, k_end, BLOCK_K):
            acc = _lr_rows(acc, z_row, stride_z, offs_t, t_ok, lo_ptr, stride_lo, k0, k_end, offs_m, m_ok, lq_ptr,
                           r, USE_DOT, FP32, ACC2D, BLOCK_K, ACC, PACKED, out_ptr.dtype.element_ty)
    _finish(acc, offs_t, t_ok, offs_m, m_ok, m, ws_ptr, cnt_ptr + pid_t * n_tiles + tile, chunks_w + lr_chunks,
            bias_ptr, out_ptr, stride_o, gcnt_ptr, state_len, all_tiles, res_ptr, stride_r,
            HAS_BIAS, USE_DOT, ACC2D, RESET, RESET_STATE, BLOCK_M, HAS_RES, ACC)


@triton.jit
def _z_item(x_ptr, stride_xt, T, n, q, pid_t, rows_z, c_ptr, tau_ptr, li_ptr, stride_li, z_ptr, stride_z, zcnt_ptr, r,
            lq_ptr, USE_DOT: tl.constexpr, FP32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_KZ: tl.constexpr,
            BLOCK_R: tl.constexpr, Z_SKIP_ACTIVE: tl.constexpr, ACC: tl.constexpr, PER_TOKEN: tl.constexpr,
            PACKED: tl.constexpr):
    # One (channel chunk, r-block) share of z = V_rᵀ (x ⊙ (1 - m)), as an item of its own.
    r_blocks = tl.cdiv(r, BLOCK_R)
    chunk = q // r_blocks
    rb = q % r_blocks
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    k_start = chunk * rows_z
    k_end = tl.minimum(k_start + rows_z, n)
    if PER_TOKEN:  # one-token code, one token per grid row: its loads read row pid_t of x
        x_ptr += pid_t * stride_xt
    _z_part(x_ptr, stride_xt, offs_t, t_ok, c_ptr, tl.load(tau_ptr), li_ptr, stride_li, z_ptr, stride_z,
            zcnt_ptr + pid_t, k_start, k_end, r, rb, r_blocks, lq_ptr, USE_DOT, FP32, BLOCK_T, BLOCK_KZ, BLOCK_R,
            Z_SKIP_ACTIVE, ACC, PACKED)


@triton.jit
def _splitk_kernel(
    x_ptr, stride_xt, T, n, rows, rows_lr, chunks_w, rows_z, chunks_z, zi0, zi1, zi2,
    gcnt_ptr, state_len, g_ptr, eps, res_ptr, stride_r,
    w0, sw0, c0, tau0, li0, sli0, lo0, slo0, z0, sz0, zc0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0, lrc0, lq0,
    w1, sw1, c1, tau1, li1, sli1, lo1, slo1, z1, sz1, zc1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1, lrc1, lq1,
    w2, sw2, c2, tau2, li2, sli2, lo2, slo2, z2, sz2, zc2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2, lrc2, lq2,
    BIAS0: tl.constexpr, BIAS1: tl.constexpr, BIAS2: tl.constexpr,
    USE_DOT: tl.constexpr, FP32: tl.constexpr, ACC2D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KZ: tl.constexpr,
    BLOCK_R: tl.constexpr, RESET: tl.constexpr, Z_SKIP_ACTIVE: tl.constexpr, Z_ITEMS: tl.constexpr,
    RESET_STATE: tl.constexpr, XC_AHEAD: tl.constexpr, PRENORM: tl.constexpr, NORM_BLOCK: tl.constexpr,
    RES0: tl.constexpr, NORM_AHEAD: tl.constexpr, PDL: tl.constexpr, ACC: tl.constexpr, PER_TOKEN: tl.constexpr,
    PACKED: tl.constexpr, EVERY_ROW: tl.constexpr, PREWAIT: tl.constexpr,
):
    # Programmatic dependent launch: nothing is read before the kernel ahead ends, except, with PREWAIT (one token,
    # the host checks), a weight item's own constants (`_w_rows_ahead`); every other item waits first.
    if PREWAIT == 0:
        _compact.pdl_enter(PDL)
    # Work items, in program order: with Z_ITEMS the z items of projections 0, 1, 2 (zi0..zi2
    # of them, chunk-major), then the weight items (chunk-major, tiles of projection 0, 1, 2
    # fastest), then the low-rank items of projections 0, 1, 2, which wait on z.
    pid = tl.program_id(0)
    pid_t = tl.program_id(1)
    tiles = tiles0 + tiles1 + tiles2
    all_tiles = tiles * tl.num_programs(1)
    n_z = zi0 + zi1 + zi2
    n_weight = chunks_w * tiles
    if Z_ITEMS and pid < n_z:  # compiled out without z items (kernel run 11: no cost at rank 0)
        if PREWAIT > 0:
            _compact.pdl_enter(PDL)
        if pid < zi0:
            _z_item(x_ptr, stride_xt, T, n, pid, pid_t, rows_z, c0, tau0, li0, sli0, z0, sz0, zc0, r0,
                    lq0, USE_DOT, FP32, BLOCK_T, BLOCK_KZ, BLOCK_R, Z_SKIP_ACTIVE, ACC, PER_TOKEN, PACKED)
        elif pid < zi0 + zi1:
            _z_item(x_ptr, stride_xt, T, n, pid - zi0, pid_t, rows_z, c1, tau1, li1, sli1, z1, sz1, zc1, r1,
                    lq1, USE_DOT, FP32, BLOCK_T, BLOCK_KZ, BLOCK_R, Z_SKIP_ACTIVE, ACC, PER_TOKEN, PACKED)
        else:
            _z_item(x_ptr, stride_xt, T, n, pid - zi0 - zi1, pid_t, rows_z, c2, tau2, li2, sli2, z2, sz2, zc2, r2,
                    lq2, USE_DOT, FP32, BLOCK_T, BLOCK_KZ, BLOCK_R, Z_SKIP_ACTIVE, ACC, PER_TOKEN, PACKED)
    elif pid - n_z < n_weight:
        chunk = (pid - n_z) // tiles
        tile = (pid - n_z) % tiles
        if tile < tiles0:
            _weight_item(x_ptr, stride_xt, T, n, chunk, tile, pid_t, rows, chunks_w,
                         w0, sw0, c0, tau0, li0, sli0, z0, sz0, zc0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0, lrc0,
                         gcnt_ptr, state_len, all_tiles, g_ptr, eps, res_ptr, stride_r, lq0,
                         BIAS0, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_KZ, BLOCK_R, RESET,
                         Z_SKIP_ACTIVE, Z_ITEMS, RESET_STATE, XC_AHEAD, PRENORM, NORM_BLOCK, RES0, NORM_AHEAD, ACC, PER_TOKEN, PACKED,
                         EVERY_ROW, PDL, PREWAIT)
        elif tile < tiles0 + tiles1:
            _weight_item(x_ptr, stride_xt, T, n, chunk, tile - tiles0, pid_t, rows, chunks_w,
                         w1, sw1, c1, tau1, li1, sli1, z1, sz1, zc1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1, lrc1,
                         gcnt_ptr, state_len, all_tiles, g_ptr, eps, res_ptr, stride_r, lq1,
                         BIAS1, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_KZ, BLOCK_R, RESET,
                         Z_SKIP_ACTIVE, Z_ITEMS, RESET_STATE, XC_AHEAD, PRENORM, NORM_BLOCK, False, NORM_AHEAD, ACC, PER_TOKEN, PACKED,
                         EVERY_ROW, PDL, PREWAIT)
        else:
            _weight_item(x_ptr, stride_xt, T, n, chunk, tile - tiles0 - tiles1, pid_t, rows, chunks_w,
                         w2, sw2, c2, tau2, li2, sli2, z2, sz2, zc2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2, lrc2,
                         gcnt_ptr, state_len, all_tiles, g_ptr, eps, res_ptr, stride_r, lq2,
                         BIAS2, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_KZ, BLOCK_R, RESET,
                         Z_SKIP_ACTIVE, Z_ITEMS, RESET_STATE, XC_AHEAD, PRENORM, NORM_BLOCK, False, NORM_AHEAD, ACC, PER_TOKEN, PACKED,
                         EVERY_ROW, PDL, PREWAIT)
    else:  # (with PREWAIT, low-rank items wait first thing in `_lowrank_item`)
        q = pid - n_z - n_weight
        l0 = lrc0 * tiles0
        l1 = lrc1 * tiles1
        if q < l0:
            _lowrank_item(T, q // tiles0, q % tiles0, pid_t, rows_lr, chunks_w, chunks_z,
                          lo0, slo0, z0, sz0, zc0, ws0, cnt0, b0, out0, so0, m0, r0, tiles0, lrc0,
                          gcnt_ptr, state_len, all_tiles, res_ptr, stride_r, lq0,
                          BIAS0, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_R, RESET, Z_ITEMS, RESET_STATE,
                          RES0, ACC, PER_TOKEN, PACKED, PDL, PREWAIT)
        elif q < l0 + l1:
            q -= l0
            _lowrank_item(T, q // tiles1, q % tiles1, pid_t, rows_lr, chunks_w, chunks_z,
                          lo1, slo1, z1, sz1, zc1, ws1, cnt1, b1, out1, so1, m1, r1, tiles1, lrc1,
                          gcnt_ptr, state_len, all_tiles, res_ptr, stride_r, lq1,
                          BIAS1, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_R, RESET, Z_ITEMS, RESET_STATE,
                          False, ACC, PER_TOKEN, PACKED, PDL, PREWAIT)
        else:
            q -= l0 + l1
            _lowrank_item(T, q // tiles2, q % tiles2, pid_t, rows_lr, chunks_w, chunks_z,
                          lo2, slo2, z2, sz2, zc2, ws2, cnt2, b2, out2, so2, m2, r2, tiles2, lrc2,
                          gcnt_ptr, state_len, all_tiles, res_ptr, stride_r, lq2,
                          BIAS2, USE_DOT, FP32, ACC2D, BLOCK_T, BLOCK_K, BLOCK_M, BLOCK_R, RESET, Z_ITEMS, RESET_STATE,
                          False, ACC, PER_TOKEN, PACKED, PDL, PREWAIT)


@dataclass(frozen=True)
class Config:
    """Tile sizes of one launch; `choose_config` picks them from shapes only."""

    block_k: int = 8  # rows per loop step
    block_m: int = 1024  # output columns per program
    programs_per_sm: int = 2  # grid size target (weight items) per multiprocessor
    num_warps: int = 4
    num_stages: int = 1
    acc2d: bool = False  # one token: keep [block_k, block_m] fp32 partials, reduce once
    block_kz: int = 32  # rows per step of the z (V_rᵀ x) loop
    block_r: int = 64  # z columns per program
    # One token only: "splitk" is the launch above; "compact" the two-launch path of
    # `rsparse.kernels.compact_gemv` (compaction, then a gathered GEMV), which uses
    # block_k, block_m, programs_per_sm, num_warps, prefetch and block_r; "inline" its
    # one-launch form (each program compacts its own channels; layers without rank).
    path: str = "splitk"
    prefetch: int = 1  # compact path: steps of rows loaded ahead (0, 1, 2)
    pdl: bool | None = None  # programmatic dependent launch of every launch (None: compact_gemv.LAUNCH_PDL)
    z_steps: int | None = None  # z items: steps of block_kz channels per item (None: Z_STEPS)
    z_items: bool | None = None  # 2-16 tokens: z in items of its own (None: DOT_Z_ITEMS decides)
    # 2-16 tokens: load every weight row of a step, not only those some token keeps, so that the loads wait on no
    # mask (the inputs of the rows no token keeps are zeros, so the sums are the same for finite weights; a NaN or
    # inf in such a row would then show). `choose_config` sets it where the kept rows are expected to be nearly all
    # (EVERY_ROW_MIN_UNION).
    every_row: bool = False
    prewait: int | None = None  # one token: what a launch reads before its PDL wait (None: PREWAIT; `prewait_of`)


_OVERRIDE: dict[str, Config] = {}


def prewait_of(cfg: Config) -> int:
    """What a one-token launch with ``cfg`` reads before its PDL wait: ``cfg.prewait``, else `PREWAIT` (0, 1 or 2)."""
    prewait = cfg.prewait if cfg.prewait is not None else PREWAIT
    if prewait not in (0, 1, 2):
        raise ValueError(f"expected PREWAIT (or Config.prewait) in 0, 1, 2, got {prewait!r}")
    return prewait


def set_config(config: Config | None, kind: str = "gemv1") -> None:
    """Force the tile sizes of every launch of ``kind`` (``"gemv1"``: one token,
    ``"dot"``: 2 to 16 tokens); for benchmarks that sweep configurations."""
    if config is None:
        _OVERRIDE.pop(kind, None)
    else:
        _OVERRIDE[kind] = config
    eager_graphs.invalidate()  # graphs captured so far recorded the old tiles


# One-token path rules, from H200 measurements (benchmarks/NOTES.md, runs 6 and 8), for big
# layers (n * m_total >= COMPACT_MIN_ELEMENTS) by the layer's expected active fraction:
# * tall layers (down_proj, n >= 2 * m_total): the one-launch inline path up to
#   INLINE_MAX_ACTIVE (run 8: 14336x4096 at 30 % active 17.7 us against 20.6 compact, 21.4 run 4);
#   with a low-rank path run 4's launch with z items (run 11: 27.8 us against 31.7 compact at rho 0.8,
#   50 %);
# * wide layers: the two-launch compact path up to SINGLE_COMPACT_MAX_ACTIVE, and up to
#   WIDE_COMPACT_MAX_ACTIVE for the widest groups (gate+up fused 4096x2x14336 at 50 %:
#   37.3 us against 42.6 run 4; a single 4096x14336 at 50 % stays faster on run 4).
# Smaller shapes and denser layers keep run 4's launch.
# Single wide layers (COMPACT_MIN_ELEMENTS <= n * m_total < WIDE_COMPACT_MIN_ELEMENTS: gate/up alone) took the compact
# path up to 0.35 active until kernel run 67. On the H100 the split-K launch overtook it at 30 % active, and compact
# tiles of 1024 columns at 4 programs per multiprocessor beat the 512-column ones from 30 % down (one token, gate/up,
# us; benchmarks/ablations/one_token_configs.py; compact 512 / compact 1024 / split-K):
#   run 66 at 70, 80, 90 %: 21.04 / 20.25 / 20.11, 14.84 / 14.65 / 17.60, 10.65 / 10.28 / 15.68;
#   run 67 at 70, 75, 80 %: 21.46 / 21.00 / 19.85, 19.07 / 17.91 / 19.46, 14.91 / 14.63 / 17.46.
# The rules for these two values were written before run 67 (benchmarks/results/run67_h100/probe/call.sh); 16-row
# split-K steps tied 8-row ones at 50 % (26.15 / 26.13), so the split-K tiles stay. Not timed on an H200.
SINGLE_COMPACT_MAX_ACTIVE = 0.25
COMPACT_MIN_ELEMENTS = 32 * 2**20  # n * m_total
WIDE_COMPACT_MAX_ACTIVE = 0.55
WIDE_COMPACT_MIN_ELEMENTS = 96 * 2**20
INLINE_MAX_ACTIVE = 0.55
# Attention-sized wide launches (q/k/v fused 4096x6144, o 4096x4096: SMALL_COMPACT_MIN_ELEMENTS <= n * m_total <
# COMPACT_MIN_ELEMENTS) take the compact path up to this active fraction; 0 keeps run 4's launch for them.
# Kernel run 37 (q/k/v fused + o at 70 %, batch 1): 23.3 us compact against 18.9 us run 4's launch; the compiled
# 0.7 decode step moved by under 0.3 %. Kept at 0, as a knob for `benchmarks/ablations/fold_ab.py`.
SMALL_COMPACT_MAX_ACTIVE = 0.0
SMALL_COMPACT_MIN_ELEMENTS = 16 * 2**20
# Wide one-token layers with a low-rank path take the compact path up to these active fractions (within the limits
# above), and the split-K launch with z items beyond them, as tall layers with a rank do since run 11: "pair" for the
# widest groups (n * m_total >= WIDE_COMPACT_MIN_ELEMENTS: gate+up fused), "single" for the rest (gate/up alone).
# Until kernel run 64 they were the limits above, on the strength of run 11 (H200: the pair at 50 %, rho 0.8, 43.74
# us compact against 47.90 split-K), before the split-K launch's later changes. benchmarks/ablations/
# wide_lowrank_path.py, rho 0.8, same rounds, on an H100 (us, compact against split-K):
#   the pair at 50 % (40 % active): run 63 54.90 / 50.06, run 64 53.85 / 49.21;
#   the pair at 60 % and 70 % (32 %, 24 %): run 64 44.65 / 45.56, runs 63-64 36.80-36.96 / 43.01-43.87;
#   gate/up alone at 60 % and 70 %: run 64 27.55 / 23.10, runs 63-64 23.54-23.70 / 20.86-20.90.
# The rule for these values was written before run 64. Not timed on an H200.
RANKED_COMPACT_MAX_ACTIVE = {"pair": 0.35, "single": 0.0}
# z items of 8 steps instead of Z_STEPS for a wide single projection with a rank above WIDE_Z_MIN_ACTIVE (the compact
# path's limit then; e.g. gate/up or an up projection alone at 50 %): faster there in all four calls of kernel runs
# 11 and 12 that timed it (0.9-2.4 us), slower at 70 % and on down_proj.
WIDE_Z_STEPS = 8
WIDE_Z_MIN_ACTIVE = 0.35
# One token, packed factors, inputs at least twice the outputs (down_proj): z items of 256 ranks over 8-channel
# steps, twice Z_STEPS of them, which halves the z items (14336 x 4096 at 1 274 ranks: 2 240 -> 1 120). They come
# first in the grid and hold the weight items back. Kernel run 57 (H100, NOTES): down at 50 % 42.88 -> 39.09 us,
# but gate/up (4096 x 14336) 35.82 -> 42.22, hence long inputs only. Run 58 (H100, long_input_z.py, alternating
# rounds) confirmed it: down 42.83 -> 38.99 us at 50 %, 32.98 -> 31.10 at 70 %; with bf16 factors (rank 318) the
# same tiles were slower (29.78 -> 33.93), hence packed only. The launch takes 96 registers on sm_90 (Triton 3.6,
# tools/aot_check_splitk.py) against 118 with the 128-rank tiles.
PACKED_LONG_INPUT_WIDE_Z = True


def _packed_levels_code(n: int, m_total: int) -> int:
    """The constexpr ``PACKED`` of a launch with packed factors over ``n`` inputs and ``m_total`` outputs:
    `PACKED_LONG_INPUT_LEVELS` where ``n >= 2 * m_total`` (down_proj), `PACKED_LEVELS` elsewhere."""
    name, levels = ("PACKED_LONG_INPUT_LEVELS", PACKED_LONG_INPUT_LEVELS) if n >= 2 * m_total else \
        ("PACKED_LEVELS", PACKED_LEVELS)
    if levels not in _PACKED_LEVELS_CODE:
        raise ValueError(f"expected {name} in {sorted(_PACKED_LEVELS_CODE)}, got {levels!r}")
    return _PACKED_LEVELS_CODE[levels]


def _switch_on(switch, packed: bool) -> bool:
    """Whether a switch of True / False / "packed" / "plain" holds for a launch with (``packed``) or without packed
    4-bit factors."""
    if switch not in (True, False, "packed", "plain"):
        raise ValueError(f"expected a switch of True, False, 'packed' or 'plain', got {switch!r}")
    return switch is True or switch == ("packed" if packed else "plain")


# 2-16 tokens without a low-rank path on dense-ish layers: 32-row steps over 256 columns (152 registers, no
# spill; the 16x512 tiles below take 168 and spill 6 words). Twenty-seventh session, batch-4 decode of the
# Llama-3-8B shape (benchmarks/NOTES.md): 0.5 at 4.97 ms/token against 5.11-5.30 with 16x512, but 0.7 (30 %
# active) at 4.71 against 4.59-4.90, so only layers expected to keep at least this fraction take them. With a
# low-rank path they are slower (gate/up at rho 0.8: 51.9 against 43.8 us).
DOT_DENSE_MIN_ACTIVE = 0.4
# From DOT_DENSE_WIDE_MIN_TOKENS tokens those tiles run 8 warps per program (110 registers on the H100, 114 in the
# offline sm_90 build, so 2 programs per multiprocessor, not 3). H100, us, 8 / 4 warps, sums over gate/up, down,
# gate+up and q/k/v + o: kernel run 69 (results/run69_h100/b4) batch 4 at 50 % 205.94 / 209.08, every case faster, and
# at 0 % every case faster; run 70 (results/run70_h100/dot8) batch 8 at 50 % 218.07 / 224.30, batch 4 at 55 % 207.46 /
# 209.12 and at 60 % 202.04 / 200.31 (within the 1 % its rule allowed), but batch 2 at 50 % 186.70 / 174.96 (gate/up
# 40.66 / 36.54), so 2 and 3 tokens (3 untimed) keep 4 warps. The limit was drawn after run 70.
# Kernel run 71 timed 3 tokens (results/run71_h100/run71.md): 8 warps 198.23 against 199.15 us, short of the 1 % its
# rule asked, so the limit stays.
# On the H200 the 4-warp tiles serve every token count (CARD_SETTINGS below).
DOT_DENSE_WIDE_MIN_TOKENS = 4
# Those tiles load every row of a step (Config.every_row) where the rows some token keeps are expected to be nearly
# all of them: `expected_kept_rows` at least this share. H100, kernel run 71 (results/run71_h100), four-case sums in
# us, every row against the masked loads' two timings: batch 4 at 0 % 208.80 against 215.97 / 216.65 and batch 8 at
# 50 % (99.6 % of rows kept) 215.29 against 221.59 / 221.51, every case faster; but batch 4 at 50 % (93.8 % kept)
# 210.02 against 208.92 / 208.34. The limit was drawn after run 71; kernel run 72 (results/run72_h100/run72.md) met
# the rule written before it at every point it covers: 2.5-3.7 % below at 0 % with 2, 3 and 4 tokens, 50 % with 7
# and 8, 40 % with 6. Just below it (50 % at 6 tokens, 98.4 % kept; 40 % at 5, 98.98 %) every row was 2.1-2.3 %
# faster too. Kernel run 73 (results/run73_h100/run73.md) looked below: 0.5-0.8 % faster at 95.9-97.3 % kept, short
# of the 1 % its rule asked for a lower limit, so the limit stays.
EVERY_ROW_MIN_UNION = 0.99
# (Two forms of the masked batch loop were timed in kernel run 88, H100, batch 4 at 50 %, four-case sums against
# 207.02 us shipped (benchmarks/results/run88_h100/): each weight item writing its chunk's union of the tokens' masks
# to a byte per row first and loading those bytes per step, DOT_UNION_SCRATCH, 304.46; the product taken as
# W^T x^T so that Triton builds Hopper's warp-group MMAs, DOT_WARPGROUP, 271.97 (with masks from x in the loop its
# pipeline issued the rows one step ahead instead of two), both 299.31. Both removed.)
DOT_DENSE_CONFIG = Config(block_k=32, block_m=256, programs_per_sm=2, num_warps=8, num_stages=3)
DOT_DENSE_FEW_TOKENS_CONFIG = Config(block_k=32, block_m=256, programs_per_sm=3, num_warps=4, num_stages=3)
# Settings another card measured otherwise: a part of the card's name (as torch.cuda.get_device_properties reports
# it) -> {setting of this module: its value there}. `choose_config` reads a listed setting through `card_setting`.
# * H200, DOT_DENSE_CONFIG: the 4-warp tiles from any token count. The 8 warps were drawn on H100s (runs 69-70); on
#   the H200 batch 4 at 50 % then read 0.80x of cuBLAS on gate/up, 0.92x down, 0.85x gate+up (kernel run 76), where
#   the 4-warp tiles had read 0.98x / 1.01x / 1.05x (run 49) and 0.97x / 1.02x / 1.07x (run 50) on the same card.
#   Cross-run, but the launch compiles to the same TTGIR at both commits (offline sm_90 build), and at 70 %, whose
#   tiles (DOT_CONFIG) did not change, runs 49 and 76 agree within 2 %. Drawn after run 76; the next H200 run times both
#   in one process (rule above sweep_inline.VARIANTS_DOT77).
# * H100 80GB HBM3, INLINE_MAX_ACTIVE: down-shaped layers without rank leave the inline path for the split-K launch
#   from 35 % active up. One token, down 14336->4096, us, inline / split-K 8 rows / 16 rows (one_token_configs.py,
#   results/run78_h100/): at 50 % 27.90 / 26.41 / 26.41 and 27.88 / 26.51 / 26.39, at 60 % 23.73 / 23.06 / 22.82 and
#   23.66 / 23.10 / 22.83, at 70 % 19.39 / 20.02 / 19.45 and 19.50 / 19.96 / 19.47 (inline stays there), at 40 %
#   (split-K already) all within 0.5 %. Rule (6) of benchmarks/next_device_call.sh, written before the second
#   reading; 16-row steps did not pass its 2 % over 8. Not timed on an H200 (next_device_call.sh h200 times it there).
#   Down fed F.silu(gate) * up (sparse_linear_silu_mul, what sparsify installs in gated MLPs) keeps the inline path up
#   to the module's limit: that launch forms the product itself, the split-K one needs a launch for it first. Kernel
#   run 79 (H100, one_token_configs.py --silu-fed, results/run79_h100/): inline folded 28.13 / 25.09 us at 50 / 60 %,
#   split-K after the product 30.44 / 27.80 (16 rows 30.38 / 27.84); rule (7), written before, kept inline.
CARD_SETTINGS: dict[str, dict[str, object]] = {
    "H200": {"DOT_DENSE_CONFIG": DOT_DENSE_FEW_TOKENS_CONFIG},
    "H100 80GB HBM3": {"INLINE_MAX_ACTIVE": 0.35},
}


def card_settings(card: str | None) -> dict[str, object]:
    """The `CARD_SETTINGS` entries that hold on the card named ``card`` (None: no card, e.g. the interpreter):
    those of every key that is part of the card's name."""
    if card is None:
        return {}
    return {name: value for part, settings in CARD_SETTINGS.items() if part in card for name, value in settings.items()}


def card_setting(name: str, card: str | None):
    """The value of this module's setting ``name`` on the card named ``card``: its `card_settings` entry, else the
    module's value."""
    if not (name.isupper() and name in globals()):
        raise ValueError(f"expected the name of a setting of rsparse.kernels.sparse_linear, got {name!r}")
    return card_settings(card).get(name, globals()[name])


@functools.lru_cache(maxsize=None)
def card_name(device: torch.device) -> str | None:
    """The name of ``device``'s card (None off CUDA), which picks its `CARD_SETTINGS`."""
    return torch.cuda.get_device_properties(device).name if device.type == "cuda" else None


# Every other launch of 2-16 tokens (kernel run 10; see choose_config).
DOT_CONFIG = Config(block_k=16, block_m=512, programs_per_sm=3, num_warps=4, num_stages=3)
# 2-16 tokens with packed 4-bit factors: DOT_CONFIG's tiles in one stage. Unpacking takes registers: compiled for
# sm_90 with Triton 3.6 (tools/aot_check_splitk.py) the launch needs 218 with 3 stages, so only 2 programs
# would fit a multiprocessor against the grid's 3; with 1 stage it needs 168, DOT_CONFIG's count. Timed on an H100
# (NOTES, thirty-second session): 2 programs over 3 stages, 3 over 2 and 16x256 tiles were no faster.
PACKED_DOT_CONFIG = Config(block_k=16, block_m=512, programs_per_sm=3, num_warps=4, num_stages=1)
# The same with z in items of its own: the unpacking of V_r leaves the weight items, so 3 stages fit again (168
# registers on sm_90), and z items of 16 steps. Batch 4, 50 %, H100 (dot_z_items.py's "z_items_steps16_3stages",
# us against PACKED_DOT_CONFIG): kernel run 58 gate/up 66.07 -> 61.20, down 77.44 -> 67.50, gate+up 120.46 -> 113.69;
# run 59 q/k/v + o 68.45 -> 77.70. So layers of at least PACKED_DOT_Z_MIN_ELEMENTS (n * m_total; the MLP's, not
# attention's 4096 x 6144 or 4096 x 4096) take it; DOT_Z_ITEMS forces it for every shape. The threshold was drawn
# after the runs, between the shapes they timed.
PACKED_DOT_Z_MIN_ELEMENTS = 32 * 2**20
PACKED_DOT_Z_CONFIG = dataclasses.replace(PACKED_DOT_CONFIG, num_stages=3, z_steps=16, z_items=True)

# One token on the split-K launch without rank: 8-row steps over 1024 columns, 4 weight items per multiprocessor (the
# H200 sweep of the third session, at 50 %). Single wide layers without rank (gate/up alone) that keep at most
# SINGLE_TALL_STEPS_MAX_ACTIVE of their channels, and more than SINGLE_COMPACT_MAX_ACTIVE, take 16-row steps
# instead, bf16 / fp16 only (fp32 inputs are for checking). On the H100 (one_token_configs.py, gate/up, us, 8-row /
# 16-row steps) they tied at 50 % (run 67: 26.13 / 26.15, 25.47 / 25.46) and won at 60 % (22.82 / 22.58, 22.25 /
# 21.90) and 70 % (run 66: 20.11 / 19.60; run 67: 19.85 / 19.54, 19.44 / 18.81). Two rules written before those runs
# failed it on its 50 % tie; the limit, 0.45 (between 40 and 50 % active), was drawn after them and held by kernel
# run 68's rule (results/run68_h100/k16/call.sh): with it, 22.62 / 20.84 / 19.47 us at 60 / 65 / 70 % sparsity against
# 23.05 / 21.43 / 19.94 with 8-row steps, and its GPU test passed.
SPLITK_CONFIG = Config(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, num_stages=1)
SINGLE_TALL_STEPS_MAX_ACTIVE = 0.45

# Best sum over both shapes at 30 % active in the run-6 sweep (18.9 + 20.6 us).
COMPACT_CONFIG = Config(path="compact", block_k=8, block_m=512, programs_per_sm=8, num_warps=2, prefetch=1)
# Single wide layers' compact tiles since kernel run 67 (see SINGLE_COMPACT_MAX_ACTIVE).
SINGLE_COMPACT_CONFIG = Config(path="compact", block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, prefetch=1)


def choose_config(
    n: int, m_total: int, use_dot: bool, itemsize: int, active_fraction: float = 1.0, has_rank: bool = False,
    packed: bool = False, tokens: int | None = None, card: str | None = None, folds_product: bool = False,
) -> Config:
    """Tile sizes and path of a launch, from the shape, the layer's expected active fraction,
    whether any of its projections has a low-rank path, whether its factors are packed 4-bit
    (``packed``: only the split-K launch reads those, so the compact and inline paths are skipped),
    the tokens per call (``tokens``; None: several, count unknown) and the card's name (``card``, `card_name`;
    None: the module's settings, `CARD_SETTINGS` apply to none). ``folds_product``: the call is
    `sparse_linear_silu_mul`'s, whose inline launch forms its input from gate and up, where every other launch needs
    a product launch first; the timings behind a card's ``INLINE_MAX_ACTIVE`` left that launch out, so there the
    module's limit holds (on the H100, kernel run 79: with the product launch split-K is 8-11 % slower)."""
    kind = "dot" if use_dot else "gemv1"
    if kind in _OVERRIDE:
        cfg = _OVERRIDE[kind]
        return dataclasses.replace(cfg, path="splitk") if packed and cfg.path != "splitk" else cfg
    one_token = not use_dot and not packed  # the compact and inline paths serve one token, unpacked factors
    if (one_token and n < 2 * m_total and SMALL_COMPACT_MIN_ELEMENTS <= n * m_total < COMPACT_MIN_ELEMENTS
            and active_fraction <= SMALL_COMPACT_MAX_ACTIVE):
        return COMPACT_CONFIG
    if one_token and n * m_total >= COMPACT_MIN_ELEMENTS:
        # (the card's limit is looked up only for tall layers without rank: this runs on every eager call)
        if n >= 2 * m_total and not has_rank and active_fraction <= (
                INLINE_MAX_ACTIVE if folds_product else card_setting("INLINE_MAX_ACTIVE", card)):
            # Best of the run-8 sweep on 14336x4096 at 50, 30 and 10 % active.
            return Config(path="inline", block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, prefetch=1)
        pair = n * m_total >= WIDE_COMPACT_MIN_ELEMENTS
        compact_max = WIDE_COMPACT_MAX_ACTIVE if pair else SINGLE_COMPACT_MAX_ACTIVE
        if has_rank:
            compact_max = min(compact_max, RANKED_COMPACT_MAX_ACTIVE["pair" if pair else "single"])
        if n < 2 * m_total and active_fraction <= compact_max:
            return COMPACT_CONFIG if pair else SINGLE_COMPACT_CONFIG
    # The best of benchmarks/sweep_splitk.py on an H200 (benchmarks/NOTES.md): one token,
    # 8-row steps over 1024 columns (16-byte loads), about 4 weight items per multiprocessor;
    # 2-16 tokens (kernel run 10, one-wave grid), 16x512 tiles over 3 stages, 3 items per
    # multiprocessor (168 registers: 3 fit): batch 4 at 50 % 1.00-1.25x cuBLAS against 0.82-1.08x.
    # One token with a low-rank path (kernel run 11): z items of 4 steps of 16 channels x 128 ranks.
    wide_single = COMPACT_MIN_ELEMENTS <= n * m_total < WIDE_COMPACT_MIN_ELEMENTS and n < 2 * m_total  # gate/up alone
    if use_dot:
        if packed:
            z_items = _switch_on(DOT_Z_ITEMS, True) or n * m_total >= PACKED_DOT_Z_MIN_ELEMENTS
            return PACKED_DOT_Z_CONFIG if z_items else PACKED_DOT_CONFIG
        if not has_rank and active_fraction >= DOT_DENSE_MIN_ACTIVE:
            few = tokens is not None and tokens < DOT_DENSE_WIDE_MIN_TOKENS
            cfg = DOT_DENSE_FEW_TOKENS_CONFIG if few else card_setting("DOT_DENSE_CONFIG", card)
            # A fused group passes its largest member's fraction: one full member makes the whole launch read every row.
            if expected_kept_rows(min(active_fraction, 1.0), tokens) >= EVERY_ROW_MIN_UNION:
                cfg = _reading_every_row(cfg)
            return cfg
        return DOT_CONFIG
    if has_rank:
        # Attention-sized launches (q/k/v fused, o) with a rank: 3 weight items per multiprocessor
        # leave slots to the z items from the start (kernel run 12: q/k/v + o at 50 % 26.3 against 28.7 us);
        # on the big shapes 4 stay faster (down_proj 27.4 against 32.1 us).
        per_sm = 3 if n * m_total < COMPACT_MIN_ELEMENTS else 4
        z_steps = WIDE_Z_STEPS if wide_single and active_fraction > WIDE_Z_MIN_ACTIVE else None
        if packed and PACKED_LONG_INPUT_WIDE_Z and n >= 2 * m_total:
            return dataclasses.replace(SPLITK_CONFIG, programs_per_sm=per_sm, block_kz=8, block_r=256,
                                       z_steps=2 * Z_STEPS)
        return dataclasses.replace(SPLITK_CONFIG, programs_per_sm=per_sm, block_kz=16, block_r=128, z_steps=z_steps)
    if one_token and wide_single and itemsize == 2 and active_fraction <= SINGLE_TALL_STEPS_MAX_ACTIVE:
        return dataclasses.replace(SPLITK_CONFIG, block_k=16)
    return SPLITK_CONFIG


@functools.lru_cache(maxsize=None)
def _reading_every_row(cfg: Config) -> Config:
    # One Config per tile setting, not a new one per call: choose_config runs on every eager decode launch.
    return dataclasses.replace(cfg, every_row=True)


def expected_kept_rows(active_fraction: float, tokens: int | None) -> float:
    """The expected share of weight rows that at least one of ``tokens`` tokens keeps, each keeping an
    ``active_fraction`` of the input channels independently of the others: ``1 - (1 - a) ** T``. An unknown count
    (None) counts as 2 tokens, the fewest a batch launch serves, so the estimate errs low."""
    if not 0.0 <= active_fraction <= 1.0:
        raise ValueError(f"expected an active fraction in [0, 1], got {active_fraction!r}")
    return 1.0 - (1.0 - active_fraction) ** (2 if tokens is None else max(1, tokens))


def z_item_rows(cfg: Config, rows: int) -> int:
    """Input channels per z item: ``z_steps`` (or `Z_STEPS`) steps of ``block_kz``; 0 steps: a weight item's ``rows``."""
    steps = Z_STEPS if cfg.z_steps is None else cfg.z_steps
    return steps * cfg.block_kz if steps else rows


def _rows_per_item(n: int, tiles: int, block_k: int, target: int) -> int:
    """Input channels per weight item, for about ``target`` items (programs_per_sm per multiprocessor).

    With `ONE_WAVE_GRID` the item count never exceeds ``target`` (as for the compact gather,
    kernel run 7). The earlier nearest count could overshoot: at batch 4 it put 272-280 items
    on 264 slots, so some multiprocessors ran one item more than the rest and the call waited
    for them (kernel run 10: 41.6 -> 33.6 us on 4096x14336 at 50 %).
    """
    if ONE_WAVE_GRID:
        chunks = max(1, target // tiles)
        return _compact.cdiv(_compact.cdiv(n, chunks), block_k) * block_k
    return max(1, round(_compact.cdiv(n, block_k) * tiles / target)) * block_k


def _item_rows(n: int, tiles: tuple[int, ...], ranks: tuple[int, ...], block_k: int, target: int,
               density: float) -> tuple[int, int]:
    """Rows per weight item (input channels) and per low-rank item (rows of ``(U_r S_r)ᵀ``).

    A weight item loads only the rows its tokens keep (about ``density`` of its chunk) while a
    low-rank item loads every row of its slice, so with equal slices the low-rank items run
    ``1 / density`` times longer and the call waits for them (kernel run 11)."""
    rows = _rows_per_item(n, sum(tiles), block_k, target)
    if not any(ranks) or LOWRANK_ROWS == "chunk":
        return rows, rows

    def lowrank_rows(rows: int) -> int:
        return max(block_k, round(rows * density / block_k) * block_k)

    if LOWRANK_ROWS == "density+wave":
        for chunks in range(max(1, target // sum(tiles)), 0, -1):
            rows = _compact.cdiv(_compact.cdiv(n, chunks), block_k) * block_k
            items = _compact.cdiv(n, rows) * sum(tiles)
            items += sum(_compact.cdiv(r, lowrank_rows(rows)) * t for r, t in zip(ranks, tiles))
            if items <= target:
                break
    return rows, lowrank_rows(rows)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 2  # the interpreter: few programs, long chunks
    return torch.cuda.get_device_properties(device).multi_processor_count


def sparse_linear_multi(
    x: torch.Tensor,
    weight_t: list[torch.Tensor],
    c: list[torch.Tensor],
    tau: list[torch.Tensor],
    lowrank_in: list[torch.Tensor],
    lowrank_out: list[torch.Tensor],
    bias: list[torch.Tensor | None],
    out: list[torch.Tensor] | None = None,
    active_fraction: float = 1.0,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    residual: torch.Tensor | None = None,
    lowrank_quant: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Triton implementation of ``rsparse::sparse_linear_multi`` (at most `MAX_PROJ` projections
    per launch; longer lists are served in groups).  ``out`` (optional) receives the results,
    e.g. NaN-filled buffers in tests proving that every element is written.

    ``lowrank_quant`` (one entry per projection, ``None`` for factors in the activation dtype): the
    ranges of packed 4-bit factors, which the split-K launch unpacks in registers.  A launch reads
    either kind, so a call that mixes projections with packed and unpacked ranks takes two.

    ``norm_weight``/``norm_eps``: the input is the RMSNorm of ``x`` (a decoder layer's residual
    stream), formed inside the launch for one token where the path allows it (the compact path;
    the split-K launch without rank), by PyTorch first otherwise.  ``residual`` (one projection):
    the output is ``residual + y``, added where each output tile is written."""
    if residual is not None and len(weight_t) != 1:
        raise ValueError(f"residual serves one projection, got {len(weight_t)}")
    quant = [None] * len(weight_t) if lowrank_quant is None else list(lowrank_quant)
    packed = [q is not None and li.shape[1] > 0 for q, li in zip(quant, lowrank_in)]
    plain_rank = [q is None and li.shape[1] > 0 for q, li in zip(quant, lowrank_in)]
    if any(packed):
        _check_packed(x.shape[1], weight_t, lowrank_in, lowrank_out, quant, packed)
    groups = None
    if len(weight_t) > MAX_PROJ:
        groups = [list(range(s, min(s + MAX_PROJ, len(weight_t)))) for s in range(0, len(weight_t), MAX_PROJ)]
    elif any(packed) and any(plain_rank):
        groups = [[j for j in range(len(weight_t)) if packed[j]], [j for j in range(len(weight_t)) if not packed[j]]]
    if groups is not None:
        if norm_weight is not None:
            x, norm_weight = _compact.rms_norm(x, norm_weight, norm_eps), None
        outs = [None] * len(weight_t)
        for g in groups:
            ys = sparse_linear_multi(
                x, *([a[j] for j in g] for a in (weight_t, c, tau, lowrank_in, lowrank_out, bias)),
                out=None if out is None else [out[j] for j in g], active_fraction=active_fraction,
                lowrank_quant=[quant[j] for j in g],
            )
            for j, y in zip(g, ys):
                outs[j] = y
        return outs
    T, n = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    ms = [w.shape[1] for w in weight_t]
    rs = [li.shape[1] for li in lowrank_in]
    outs = [x.new_empty(T, m) for m in ms] if out is None else out
    if T == 0:
        return outs
    # fp32 inputs: products and sums in fp64, rounded once, as the reference computes them on the GPU
    # (`rsparse.ops.reference.sums_in_fp64`), so that the two agree to the bit.  That takes the
    # split-K launch's one-token code for every token (one token per grid row; no tensor-core dot).
    f64 = x.dtype == torch.float32
    use_dot = T > 1 and not f64
    cfg = choose_config(n, sum(ms), use_dot, x.element_size(), active_fraction, any(rs), any(packed), tokens=T,
                        card=card_name(x.device))
    if cfg.path not in ("splitk", "compact", "inline"):
        raise ValueError(f"Config.path must be 'splitk', 'compact' or 'inline', got {cfg.path!r}")
    if cfg.path != "splitk" and T == 1 and not f64 and all(o.stride(-1) == 1 for o in outs):
        return _compact_path(cfg, x, weight_t, c, tau, lowrank_in, lowrank_out, bias, outs,
                             norm_weight=norm_weight, norm_eps=norm_eps, residual=residual)
    xc_ahead = XC_AHEAD and not use_dot and not cfg.acc2d
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    block_t = 16 if use_dot else 1  # tl.dot needs 16 rows on the GPU
    t_blocks = _compact.cdiv(T, block_t)
    # fp32 dots for fp32 inputs, and under the interpreter for bf16 (numpy has no bf16 dot).
    fp32 = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")
    tiles = [_compact.cdiv(m, cfg.block_m) for m in ms]
    # Share of weight rows a one-token launch is expected to read (batches: run 10's items, all rows).
    density = 1.0 if use_dot else min(max(active_fraction, 0.0), 1.0)
    slots = max(1, _sm_count(x.device) * cfg.programs_per_sm)  # one wave of items
    rows, rows_lr = _item_rows(n, tuple(tiles), tuple(rs), cfg.block_k, slots, density)
    if use_dot and DOT_LOWRANK_ROWS_DIV > 1:
        rows_lr = max(cfg.block_k, rows_lr // DOT_LOWRANK_ROWS_DIV // cfg.block_k * cfg.block_k)
    chunks_w = _compact.cdiv(n, rows)
    lrc = [_compact.cdiv(r, rows_lr) for r in rs]
    # The split-K launch folds the norm for one token without rank (z items read x on their own)
    # and with short items; otherwise one small launch forms it first (decode run 29: folded into
    # gate/up's 232-row items the norm cost more than that launch).
    prenorm = (norm_weight is not None and xc_ahead and not any(rs) and n <= _compact.PRENORM_MAX_N
               and rows <= PRENORM_MAX_ROWS and not f64)
    if norm_weight is not None and not prenorm:
        if f64:  # PyTorch's norm, so that the input is the reference's to the bit
            x = rms_norm_reference(x, norm_weight, norm_eps)
        else:
            x = _compact.rms_norm(x, norm_weight, norm_eps, cfg.pdl)
        norm_weight = None
    if prenorm and norm_weight.stride(-1) != 1:
        norm_weight = norm_weight.contiguous()

    # One zeroed fp32 workspace: split-K sums | tile counters | the state: launch counter, z,
    # z counters.  Each call leaves it zero: the last program of each tile puts its sums and
    # counter back, and with a low-rank path the last tile of the launch puts the state back
    # (kernel run 12; before, calls with a rank took a fresh torch.zeros, a memset launch of
    # 1-2 us ahead of the kernel).  So the persistent buffer of `compact_gemv` serves.
    # With fp64 sums the split-K sums and z take two words per value, and z starts on an even word.
    k = len(ms)
    words = 2 if f64 else 1
    counters = [t_blocks * t for t in tiles]
    state_sizes = [2 - sum(counters) % 2 if f64 else 1] + [words * T * r for r in rs] + [t_blocks] * k
    sizes = [words * T * m for m in ms] + counters + state_sizes
    int32 = (*range(k, 2 * k + 1), *range(3 * k + 1, 4 * k + 1))  # tile counters, launch counter, z counters
    float64 = (*range(k), *range(2 * k + 1, 3 * k + 1)) if f64 else ()  # split-K sums, z
    if PERSISTENT_WORKSPACE:
        _, parts = _compact.workspace_parts(x.device, sizes, int32=int32, float64=float64)
    else:
        flat = torch.zeros(sum(sizes), dtype=torch.float32, device=x.device)
        parts = _compact.cut_parts(flat, sizes, int32, float64)
    ws, cnt, gcnt = parts[:k], parts[k : 2 * k], parts[2 * k]
    z = [p.view(T, r) for p, r in zip(parts[2 * k + 1 : 3 * k + 1], rs)]
    zcnt = parts[3 * k + 1 :]
    state_len = sum(state_sizes)  # consecutive words from gcnt on
    reset = PERSISTENT_WORKSPACE

    w_ = [w if w.stride(1) == 1 else w.contiguous() for w in weight_t]
    li_, lo_ = _factor_args(w_, lowrank_in, lowrank_out, any(packed))

    if use_dot:
        z_items = cfg.z_items if cfg.z_items is not None else _switch_on(DOT_Z_ITEMS, any(packed))
    else:
        z_items = Z_ITEMS
    z_items = z_items and any(rs)
    rows_z = z_item_rows(cfg, rows)
    chunks_z = _compact.cdiv(n, rows_z)
    zi = [chunks_z * _compact.cdiv(rs[j], cfg.block_r) if z_items and real else 0 for j, real in _compact._slots(k)]
    args = [x, x.stride(0), T, n, rows, rows_lr, chunks_w, rows_z, chunks_z, *zi, gcnt, state_len,
            norm_weight if prenorm else x, float(norm_eps), residual if residual is not None else outs[0],
            residual.stride(0) if residual is not None else 0]
    has_bias = []
    for j, real in _compact._slots(k):  # unused slots repeat the last projection with 0 tiles
        b = bias[j] if real else None
        has_bias.append(b is not None)
        args += [
            w_[j], w_[j].stride(0), c[j], tau[j], li_[j], max(li_[j].stride(0), 1), lo_[j], max(lo_[j].stride(0), 1),
            z[j], max(z[j].stride(0), 1), zcnt[j], ws[j], cnt[j], b if b is not None else w_[j], outs[j],
            outs[j].stride(0), ms[j], rs[j], tiles[j] if real else 0, lrc[j] if real else 0,
            quant[j] if packed[j] else c[j],  # the ranges of packed factors (unread otherwise)
        ]
    pdl = _compact.pdl_enabled(x.device, cfg.pdl)
    prewait = prewait_of(cfg)
    # Only one-token weight items read anything before their wait, and only where the z (if any) is in items of
    # its own (the weight items then compute no z) and the norm's inputs are not loaded two steps ahead. Without
    # PDL there is no wait, but the same code runs (so the interpreter checks its first step).
    if not (xc_ahead and (z_items or not any(rs)) and not (prenorm and PRENORM_AHEAD)):
        prewait = 0
    grid = (sum(zi) + chunks_w * sum(tiles) + sum(l * t for l, t in zip(lrc, tiles)), t_blocks)
    _splitk_kernel[grid](
        *args,
        BIAS0=has_bias[0], BIAS1=has_bias[1], BIAS2=has_bias[2], USE_DOT=use_dot, FP32=fp32, ACC2D=cfg.acc2d,
        BLOCK_T=block_t, BLOCK_K=cfg.block_k, BLOCK_M=cfg.block_m, BLOCK_KZ=cfg.block_kz, BLOCK_R=cfg.block_r,
        RESET=reset, Z_SKIP_ACTIVE=Z_SKIP_ACTIVE and not use_dot, Z_ITEMS=z_items, RESET_STATE=reset and any(rs),
        XC_AHEAD=xc_ahead, PRENORM=prenorm, NORM_BLOCK=_compact.next_power_of_2(n) if prenorm else 1,
        RES0=residual is not None, NORM_AHEAD=prenorm and PRENORM_AHEAD, PDL=pdl,
        ACC=tl.float64 if f64 else tl.float32, PER_TOKEN=not use_dot and T > 1,
        PACKED=_packed_levels_code(n, sum(ms)) if any(packed) else 0, EVERY_ROW=cfg.every_row and use_dot,
        PREWAIT=prewait, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **_compact.pdl_kwargs(pdl),
    )
    return outs


def _factor_args(weight_t, lowrank_in, lowrank_out, packed_launch: bool):
    """The low-rank factors as the launch reads them: contiguous rows; a rank-0 projection's (never read)
    stand in as its weight, in the activation dtype, unless the launch reads packed factors. Packed
    rank-0 factors are uint8 tensors of no columns, and a batched launch that is not ``PACKED``
    compiles its tensor-core dots for the pointer's dtype: Triton refuses a uint8 ``tl.dot`` (the
    thirty-third session's GPU suite: sparsified models whose search kept a layer without rank)."""
    li_, lo_ = [], []
    for w, li, lo in zip(weight_t, lowrank_in, lowrank_out):
        if li.shape[1] == 0 and li.dtype != w.dtype and not packed_launch:
            li = lo = w
        li_.append(li if li.shape[1] == 0 or li.stride(1) == 1 else li.contiguous())
        lo_.append(lo if lo.shape[0] == 0 or lo.stride(1) == 1 else lo.contiguous())
    return li_, lo_


def _check_packed(n, weight_t, lowrank_in, lowrank_out, quant, packed) -> None:
    """ValueErrors for packed factors whose shapes or ranges do not fit `rsparse.factor_quant`'s format."""
    for j in (j for j, p in enumerate(packed) if p):
        r, m = lowrank_in[j].shape[1], weight_t[j].shape[1]
        want = ((n + 1) // 2, r), ((r + 1) // 2, m), (4, r)
        got = tuple(lowrank_in[j].shape), tuple(lowrank_out[j].shape), tuple(quant[j].shape)
        if got != want or lowrank_in[j].dtype != torch.uint8 or lowrank_out[j].dtype != torch.uint8 \
                or quant[j].dtype != torch.float32:
            raise ValueError(
                f"packed factors of projection {j} must be uint8 {want[0]}, uint8 {want[1]} and fp32 ranges {want[2]}; "
                f"got {lowrank_in[j].dtype} {got[0]}, {lowrank_out[j].dtype} {got[1]} and {quant[j].dtype} {got[2]}"
            )


def _compact_path(cfg: Config, x, weight_t, c, tau, lowrank_in, lowrank_out, bias, outs, up=None,
                  norm_weight=None, norm_eps=0.0, residual=None):
    """One token through `rsparse.kernels.compact_gemv` with ``cfg``'s tiles (path "compact" or "inline")."""
    return _compact.compact_gemv(
        x, weight_t, c, tau, lowrank_in, lowrank_out, bias, outs, _sm_count(x.device),
        block_k=cfg.block_k, block_m=cfg.block_m, programs_per_sm=cfg.programs_per_sm,
        num_warps=cfg.num_warps, prefetch=cfg.prefetch, block_r=cfg.block_r, pdl=cfg.pdl,
        inline=cfg.path == "inline", up=up, norm_weight=norm_weight, norm_eps=norm_eps, residual=residual,
        prewait=prewait_of(cfg) > 0,
    )


def sparse_linear(
    x, weight_t, c, tau, lowrank_in, lowrank_out, bias, out=None, active_fraction: float = 1.0, residual=None,
    lowrank_quant=None,
) -> torch.Tensor:
    """Triton implementation of ``rsparse::sparse_linear`` (``residual``, ``lowrank_quant``: see
    `sparse_linear_multi`)."""
    outs = None if out is None else [out]
    return sparse_linear_multi(
        x, [weight_t], [c], [tau], [lowrank_in], [lowrank_out], [bias], outs, active_fraction, residual=residual,
        lowrank_quant=None if lowrank_quant is None else [lowrank_quant],
    )[0]


def sparse_linear_silu_mul(
    gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, out=None, active_fraction: float = 1.0, residual=None,
    lowrank_quant=None,
) -> torch.Tensor:
    """Triton implementation of ``rsparse::sparse_linear_silu_mul``: `sparse_linear` on
    ``F.silu(gate) * up`` (the input of a gated MLP's down projection).

    Where one token takes the one-launch ``"inline"`` path (down_proj without a low-rank path,
    `choose_config`), its programs form the product from ``gate`` and ``up`` as they load their
    chunk, so the product needs no launch of its own; every other call forms it with PyTorch first."""
    if up.shape != gate.shape or gate.dim() != 2:
        raise ValueError(f"gate and up must both be [T, n], got {tuple(gate.shape)} and {tuple(up.shape)}")
    T, n = gate.shape
    if gate.stride(1) != 1:
        gate = gate.contiguous()
    if up.stride(1) != 1:
        up = up.contiguous()
    has_rank = lowrank_in.shape[1] > 0
    cfg = choose_config(n, weight_t.shape[1], T > 1, gate.element_size(), active_fraction, has_rank,
                        has_rank and lowrank_quant is not None, tokens=T, card=card_name(gate.device),
                        folds_product=True)
    if T == 1 and cfg.path == "inline" and gate.dtype != torch.float32 and (out is None or out.stride(-1) == 1):
        outs = [gate.new_empty(1, weight_t.shape[1]) if out is None else out]
        return _compact_path(cfg, gate, [weight_t], [c], [tau], [lowrank_in], [lowrank_out], [bias], outs, up,
                             residual=residual)[0]
    x = torch.nn.functional.silu(gate) * up
    return sparse_linear(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, out, active_fraction, residual, lowrank_quant)
