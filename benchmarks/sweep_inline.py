"""Device script for kernel runs 8 and 9 (issue 5): the one-launch `inline` path of
`rsparse.kernels.compact_gemv` (each program compacts its own channels, then streams their
rows) against run 4's launch, the two-launch compact path and cuBLAS, in one process.
``--variants run9`` times the run-9 set: inline launches with narrower tiles and fewer,
longer channel chunks; ``--variants run10`` the run-10 set: launch settings for the attention
shapes (q/k/v fused, o).

For every point (case, sparsity; rho 1, batch 1, bf16) the layers are built once (random
weights, ``tau`` at the budget's quantile of the benchmark input, weight copies rotated
beyond L2 as in `kernel_speed.py`), cuBLAS dense is timed once, then every variant on the very
same layers: median µs per call under CUDA-graph replay, and the relative error of one
call against the PyTorch reference.  One JSON line per result in ``--out``/inline.jsonl as
it goes; new points stop after ``--limit`` seconds.

    PYTHONPATH=$PWD/src python3 benchmarks/sweep_inline.py --out $OUT --reps 10 --limit 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_speed as B  # noqa: E402

import rsparse  # noqa: E402
from rsparse.kernels import sparse_linear as K  # noqa: E402
from rsparse.ops import sparse_linear_reference  # noqa: E402

T0 = time.time()
VARIANTS = {  # name -> one-token Config (kernel run 8)
    "run4": K.Config(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, num_stages=1, prefetch=0),
    "run4 memset": K.Config(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, num_stages=1, prefetch=0),  # fresh zeroed workspace
    "compact": K.Config(path="compact", block_k=8, block_m=512, programs_per_sm=8, num_warps=2, prefetch=1),
    "inline 8,512,8,2,1": K.Config(path="inline", block_k=8, block_m=512, programs_per_sm=8, num_warps=2, prefetch=1),
    "inline 8,512,6,2,2": K.Config(path="inline", block_k=8, block_m=512, programs_per_sm=6, num_warps=2, prefetch=2),
    "inline 8,1024,4,4,1": K.Config(path="inline", block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, prefetch=1),
    "inline 8,256,16,1,1": K.Config(path="inline", block_k=8, block_m=256, programs_per_sm=16, num_warps=1, prefetch=1),
}
# Kernel run 9: narrower tiles and fewer programs per multiprocessor give the inline path fewer,
# longer channel chunks (chunks = programs / tiles), so the busiest chunk is closer to the mean.
VARIANTS_RUN9 = {
    "run4": VARIANTS["run4"],
    "compact": VARIANTS["compact"],
    "inline 8,1024,4,4,1": VARIANTS["inline 8,1024,4,4,1"],
    "inline 8,256,4,2,1": K.Config(path="inline", block_k=8, block_m=256, programs_per_sm=4, num_warps=2, prefetch=1),
    "inline 16,256,4,2,1": K.Config(path="inline", block_k=16, block_m=256, programs_per_sm=4, num_warps=2, prefetch=1),
    "inline 8,256,4,2,2": K.Config(path="inline", block_k=8, block_m=256, programs_per_sm=4, num_warps=2, prefetch=2),
    "inline 8,256,8,1,1": K.Config(path="inline", block_k=8, block_m=256, programs_per_sm=8, num_warps=1, prefetch=1),
    "inline 8,128,8,1,1": K.Config(path="inline", block_k=8, block_m=128, programs_per_sm=8, num_warps=1, prefetch=1),
    "inline 16,512,4,4,1": K.Config(path="inline", block_k=16, block_m=512, programs_per_sm=4, num_warps=4, prefetch=1),
    "inline 8,512,4,2,2": K.Config(path="inline", block_k=8, block_m=512, programs_per_sm=4, num_warps=2, prefetch=2),
    "inline 16,256,2,4,1": K.Config(path="inline", block_k=16, block_m=256, programs_per_sm=2, num_warps=4, prefetch=1),
}
# Kernel run 10: the attention shapes (q/k/v fused, o), which took the big shapes' setting
# unswept.  There each program walks only 4-6 steps, and every step waits twice (x and c, then
# the rows they select): shorter chains (more, wider steps per program, more programs) or the
# pipeliner (num_stages 2) may hide that latency.
_S = lambda bk, bm, pps, nw, st=1: K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st)  # noqa: E731
VARIANTS_RUN10 = {
    "run4": VARIANTS["run4"],
    "8,1024,8,4": _S(8, 1024, 8, 4),
    "8,512,8,2": _S(8, 512, 8, 2),
    "16,512,8,4": _S(16, 512, 8, 4),
    "16,512,4,4": _S(16, 512, 4, 4),
    "16,1024,4,8": _S(16, 1024, 4, 8),
    "32,512,8,8": _S(32, 512, 8, 8),
    "32,256,16,4": _S(32, 256, 16, 4),
    "16,256,16,2": _S(16, 256, 16, 2),
    "8,256,16,2": _S(8, 256, 16, 2),
    "8,1024,4,4,st2": _S(8, 1024, 4, 4, 2),
    "8,512,8,2,st2": _S(8, 512, 8, 2, 2),
    "16,512,8,4,st2": _S(16, 512, 8, 4, 2),
    "inline 8,1024,4,4,1": VARIANTS["inline 8,1024,4,4,1"],
    "inline 8,512,8,2,1": VARIANTS["inline 8,512,8,2,1"],
}
# Kernel run 10, second set: run 4's one-token loop pipelined by hand (`Config.prefetch` 1:
# the next step's rows and the x/c of the step after are in flight during the FMAs).  Measured
# at commit d1ce5ee; the pipelined loop bought nothing and was removed after it, so on later
# code the "pf1" settings of this set and the next run the plain loop.
_P = lambda bk, bm, pps, nw, pf=1: K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, prefetch=pf)  # noqa: E731
VARIANTS_RUN10B = {
    "run4 pf0": _P(8, 1024, 4, 4, 0),
    "run4 pf1": _P(8, 1024, 4, 4),
    "pf1 8,1024,3,4": _P(8, 1024, 3, 4),
    "pf1 8,1024,6,4": _P(8, 1024, 6, 4),
    "pf1 8,512,8,2": _P(8, 512, 8, 2),
    "pf1 8,512,6,2": _P(8, 512, 6, 2),
    "pf1 8,2048,2,8": _P(8, 2048, 2, 8),
    "compact": VARIANTS["compact"],
    "inline 8,1024,4,4,1": VARIANTS["inline 8,1024,4,4,1"],
}
# Third set: the pipelined loop on narrower tiles and more programs, on a grid that stays
# within one wave (`sparse_linear.ONE_WAVE_GRID`); "round" names the earlier grid rule.
VARIANTS_RUN10C = {
    "run4 pf0": _P(8, 1024, 4, 4, 0),
    "pf1 8,512,8,2": _P(8, 512, 8, 2),
    "pf1 8,512,8,2 round": (_P(8, 512, 8, 2), {"ONE_WAVE_GRID": False}),
    "pf1 8,512,10,2": _P(8, 512, 10, 2),
    "pf1 8,512,12,2": _P(8, 512, 12, 2),
    "pf1 8,256,16,1": _P(8, 256, 16, 1),
    "pf1 8,1024,4,8": _P(8, 1024, 4, 8),
    "pf1 8,1024,6,8": _P(8, 1024, 6, 8),
    "pf1 4,1024,8,4": _P(4, 1024, 8, 4),
    "pf1 8,512,6,4": _P(8, 512, 6, 4),
    "compact": VARIANTS["compact"],
    "inline 8,1024,4,4,1": VARIANTS["inline 8,1024,4,4,1"],
}
# Batch 4 (the tl.dot path, `set_config(..., "dot")`): run 4's setting on the earlier grid rule,
# which put 272-280 items on 264 slots for the big shapes, against the one-wave grid.
_D = lambda bk, bm, pps, nw, st: K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st)  # noqa: E731
VARIANTS_DOT10 = {
    "dot 16,512,2,4,4 round": (_D(16, 512, 2, 4, 4), {"ONE_WAVE_GRID": False}),
    "dot 16,512,2,4,4": _D(16, 512, 2, 4, 4),
    "dot 16,512,3,4,3": _D(16, 512, 3, 4, 3),
    "dot 16,256,4,4,4": _D(16, 256, 4, 4, 4),
    "dot 16,1024,1,8,3": _D(16, 1024, 1, 8, 3),
}
# Low rank (use with --rho 0.8): the one-wave grid against the earlier nearest-count grid.  The
# low-rank items come last in the grid and wait for z; commit 8361050 also timed a budget that
# counted them (`ONE_WAVE_COUNTS_LOWRANK`, results/sweep_run10_lowrank_*); it bought nothing and
# was removed, so that setting is not in these sets.
_RUN4 = _P(8, 1024, 4, 4, 0)
_DOT = _D(16, 512, 3, 4, 3)
VARIANTS_LR10 = {
    "run4 old grid": (_RUN4, {"ONE_WAVE_GRID": False}),
    "run4 one wave, weight items": _RUN4,
    "compact": VARIANTS["compact"],
}
VARIANTS_DOTLR10 = {
    "dot old grid": (_DOT, {"ONE_WAVE_GRID": False}),
    "dot one wave, weight items": _DOT,
}
# Kernel run 11 (use with --rho 0.8): low-rank items as long as a weight item's chunk ("chunk", runs 4-10)
# stream 1/density times the rows a weight item loads; "density" sizes them by the layer's expected
# share of rows read, "density+wave" also keeps weight and low-rank items within one wave.  "V all":
# the z producers also read the rows of V_r whose channel is active (runs 4-10).
_CHUNK_OLD = {"LOWRANK_ROWS": "chunk", "Z_SKIP_ACTIVE": False}
VARIANTS_LR11 = {
    "run4 chunk, V all": (_RUN4, _CHUNK_OLD),
    "run4 chunk": (_RUN4, {"LOWRANK_ROWS": "chunk"}),
    "run4 density": (_RUN4, {"LOWRANK_ROWS": "density"}),
    "run4 density+wave": (_RUN4, {"LOWRANK_ROWS": "density+wave"}),
    "8,512,8,2 density": (_S(8, 512, 8, 2), {"LOWRANK_ROWS": "density"}),
    "8,512,8,2 density+wave": (_S(8, 512, 8, 2), {"LOWRANK_ROWS": "density+wave"}),
    "compact": VARIANTS["compact"],
}
# Since run 11's final code, batch launches ignore LOWRANK_ROWS and Z_SKIP_ACTIVE (they were slower there),
# so on today's code these three time the same launch; results/sweep_run11a_lowrank_b4.* has the run-11a figures.
VARIANTS_DOTLR11 = {
    "dot chunk, V all": (_DOT, _CHUNK_OLD),
    "dot density": (_DOT, {"LOWRANK_ROWS": "density"}),
    "dot density+wave": (_DOT, {"LOWRANK_ROWS": "density+wave"}),
}
# Second run-11 set (--rho 0.8): every weight item of a tall layer is a z producer, and its z part is a chain
# of block_kz-row steps per 64-column r-block before its first weight row; wider z steps and r-blocks
# shorten that chain (block_kz, block_r of the Config).
_Z = lambda kz, br: K.Config(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, num_stages=1, block_kz=kz, block_r=br)  # noqa: E731
VARIANTS_LR11B = {
    "run4 chunk, V all": (_RUN4, _CHUNK_OLD),
    "kz32 r64 (run 11a)": _Z(32, 64),
    "kz64 r64": _Z(64, 64),
    "kz128 r64": _Z(128, 64),
    "kz16 r128": _Z(16, 128),
    "kz32 r128": _Z(32, 128),
    "kz64 r128": _Z(64, 128),
    "kz16 r256": _Z(16, 256),
    "kz64 r64 V all": (_Z(64, 64), {"Z_SKIP_ACTIVE": False}),
    "compact": VARIANTS["compact"],
}
# Third run-11 set (--rho 0.8): z as items of its own, first in the grid (`Z_ITEMS`), so no weight item
# waits through a z prologue before its first row.
VARIANTS_LR11C = {
    "run4 chunk, V all (run 10)": (_RUN4, {**_CHUNK_OLD, "Z_ITEMS": False}),
    "z in weight items (run 11a)": (_RUN4, {"Z_ITEMS": False}),
    "z items": _RUN4,
    "z items, chunk rows": (_RUN4, {"LOWRANK_ROWS": "chunk"}),
    "z items kz16": _Z(16, 64),
    "z items r128": _Z(32, 128),
    "z items kz16 r128": _Z(16, 128),
    "compact": VARIANTS["compact"],
}
# Fourth run-11 set (--rho 0.8): z items of Z_STEPS steps of block_kz channels each, whatever the weight
# chunk (run 11c: a z item as long as a weight chunk is a chain of rows / block_kz dependent steps).
VARIANTS_LR11D = {
    "z items (11c)": _RUN4,
    "kz16 r128 (11c)": _Z(16, 128),
    "kz16 r128 s2": (_Z(16, 128), {"Z_STEPS": 2}),
    "kz16 r128 s4": (_Z(16, 128), {"Z_STEPS": 4}),
    "kz16 r128 s8": (_Z(16, 128), {"Z_STEPS": 8}),
    "kz32 r64 s2": (_RUN4, {"Z_STEPS": 2}),
    "kz32 r64 s4": (_RUN4, {"Z_STEPS": 4}),
    "kz16 r256 s4": (_Z(16, 256), {"Z_STEPS": 4}),
    "kz8 r256 s8": (_Z(8, 256), {"Z_STEPS": 8}),
    "compact": VARIANTS["compact"],
}
# Kernel run 12 (--rho 0.8): calls with a low-rank path leave z and its counters zero in the persistent
# workspace (the last tile of the launch resets them), so no memset launch precedes the kernel; "memset" is
# the run-11 call (a fresh torch.zeros per call).  Also shorter and longer z items on top.
_ZR = _Z(16, 128)  # choose_config(..., has_rank=True), kernel run 11
VARIANTS_LR12 = {
    "z items, memset (run 11)": (_ZR, {"PERSISTENT_WORKSPACE": False}),
    "z items, no memset": _ZR,
    "no memset, s2": (_ZR, {"Z_STEPS": 2}),
    "no memset, s8": (_ZR, {"Z_STEPS": 8}),
    "no memset, kz32 r128 s2": (_Z(32, 128), {"Z_STEPS": 2}),
    "compact": VARIANTS["compact"],
}
# Two more run-12 sets ran on commits 3fd129c ("lr12b": z steps reduced at once, Z_ACC1D, for wider z steps)
# and be8623c ("lr12c": z items after the weight items, Z_FIRST False; 3 weight items per multiprocessor).
# Both switches were slower and were removed again; results/sweep_run12b_lowrank_b1.* and sweep_run12c_*
# have the figures (benchmarks/NOTES.md, run 12).
# Fourth run-12 set (--rho 0.8, attention shapes): 3 weight items per multiprocessor instead of 4 (in lr12c,
# q/k/v + o at 50 %: 26.3 against 28.7 us), each setting timed twice to see the spread.
_Z3 = K.Config(block_k=8, block_m=1024, programs_per_sm=3, num_warps=4, num_stages=1, block_kz=16, block_r=128)
VARIANTS_LR12D = {"4/SM (run 11)": _ZR, "3/SM": _Z3, "4/SM again": _ZR, "3/SM again": _Z3}
# A fifth run-12 set ("lr12e", commit 0777f1b: the z item's steps unrolled at compile time, Z_UNROLL) was
# slower on down_proj (31.7-31.9 against 27.2-28.5 us) and was removed again; results/sweep_run12e_lowrank_b1.*.
VARIANTS_DOTLR12 = {
    "dot, memset (run 11)": (_DOT, {"PERSISTENT_WORKSPACE": False}),
    "dot, no memset": _DOT,
}
# Kernel run 13 (commit dbd5320).  "run13" (rho 1): the one-token loop loads the next step's x and c while the
# current rows are in flight (XC_AHEAD, since adopted), each setting twice for the spread.  A second set, "lr13"
# (--rho 0.8), added z up inside the weight loop (Z_INLOOP: each tile of a projection took its share of the ranks,
# no z items): 4-10 us slower everywhere, removed again (results/sweep_run13a_lowrank_b1.*).  "lr13b" (--rho 0.8,
# commit 3c3d247) also timed z items that load their next step's x and c ahead (Z_AHEAD): 1-2.4 us slower, removed
# again (results/sweep_run13b_lowrank_b1.*).  A None config is what choose_config picks.
_AHEAD = {"XC_AHEAD": True}
_PLAIN = {"XC_AHEAD": False}
VARIANTS_RUN13 = {
    "shipped": (None, {}),
    "run4": (_RUN4, _PLAIN),
    "run4 ahead": (_RUN4, _AHEAD),
    "8,512,8,2 ahead": (_S(8, 512, 8, 2), _AHEAD),
    "run4 again": (_RUN4, _PLAIN),
    "run4 ahead again": (_RUN4, _AHEAD),
}
VARIANTS_LR13B = {
    "weights plain (run 12)": (None, _PLAIN),
    "weights ahead": (None, {}),
    "weights plain again": (None, _PLAIN),
    "weights ahead again": (None, {}),
}
# A third rho-0.8 set, "lr13c" (commit 23def3f), put the z items in groups with the weight items (Z_INTERLEAVE k: k
# weight items, then one z item, first in the grid; 5 programs per multiprocessor, as the rank kernel's 96 registers
# allow), so z would run beside the first wave's weight rows: 0.4-4 us slower, removed again
# (results/sweep_run13c_lowrank_b1.*).
# Kernel run 15: the split-K epilogue (one fp32 atomic per output column per program, then the tile counter)
# costs 1.2-2.2 µs of a launch (benchmarks/atomics_cost.py); narrower tiles with taller steps keep a step's
# bytes (and the number of steps) but write a quarter or a half of the partial sums. ACC2D keeps [BLOCK_K, BLOCK_M]
# fp32 partials and reduces them once at the end, so a step has no reduction across warps (run 10's 16- and
# 32-row steps without it were 2-3x slower).
_A = lambda bk, bm, pps, nw: K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, acc2d=True)  # noqa: E731
VARIANTS_RUN15 = {
    "shipped": (None, {}),
    "acc2d 8,1024,4,4": _A(8, 1024, 4, 4),
    "acc2d 16,512,4,4": _A(16, 512, 4, 4),
    "acc2d 32,256,4,4": _A(32, 256, 4, 4),
    "acc2d 64,128,4,4": _A(64, 128, 4, 4),
    "acc2d 16,256,8,2": _A(16, 256, 8, 2),
    "acc2d 32,128,8,2": _A(32, 128, 8, 2),
    "shipped again": (None, {}),
}
# Twenty-sixth session (use with --batch 4): tile settings of the tensor-core launch not swept in run 10 (taller
# steps, narrower tiles, other stage counts), against the shipped 16,512,3/SM,4 warps,3 stages.
VARIANTS_DOT26 = {
    "dot (shipped)": _DOT,
    "dot 32,256,3,4,3": _D(32, 256, 3, 4, 3),
    "dot 32,512,2,4,3": _D(32, 512, 2, 4, 3),
    "dot 16,512,3,4,4": _D(16, 512, 3, 4, 4),
    "dot 16,512,3,4,2": _D(16, 512, 3, 4, 2),
    "dot 64,256,2,4,3": _D(64, 256, 2, 4, 3),
    "dot 16,256,6,4,3": _D(16, 256, 6, 4, 3),
    "dot 32,1024,1,8,3": _D(32, 1024, 1, 8, 3),
    "dot (shipped) again": _DOT,
}
# Forty-first session ("dot68", batch 4): gate/up alone stays at 0.98x of cuBLAS at 50 % (runs 66-67), and at 0 % the
# launch streams about 5 % slower than cuBLAS, so the question is the tiles' streaming rate. Untried so far: 8 warps
# per program and a fourth stage. Programs per multiprocessor are what fits, read off an offline sm_90 build (Triton
# 3.6, bf16): 32x512 with 8 warps 110 registers, 69 632 bytes of shared memory at 3 stages; 32x256 with 8 warps 114
# registers (2 programs fit, not 3); 32x256 with 4 warps over 4 stages 153 registers, 55 296 bytes (3 fit); 16x1024
# and 64x256 with 8 warps take 182 and 154 registers, so only 1 program fits, and are left out. Rule, written before
# the run: a setting goes on to acceptance rows (kernel_speed.py --dot, a later call) only if it beats the faster of
# the two shipped timings by at least 2 % on gate/up at 50 % and at 0 %, and is not slower than the slower shipped
# timing on down at 50 %.
_DOT_DENSE = _D(32, 256, 3, 4, 3)
VARIANTS_DOT68 = {
    "dot dense (shipped)": _DOT_DENSE,
    "dot 32,512,2,8,3": _D(32, 512, 2, 8, 3),
    "dot 32,512,2,8,4": _D(32, 512, 2, 8, 4),
    "dot 32,256,2,8,3": _D(32, 256, 2, 8, 3),
    "dot 32,256,3,4,4": _D(32, 256, 3, 4, 4),
    "dot dense (shipped) again": _DOT_DENSE,
}
# Kernel run 69 ("dot69", batch 4): the one "dot68" setting that fit 2 programs and did not lose, 32x256 tiles with
# 8 warps (gate/up tied, down 2-3 % faster in run 68), on every case at 50 / 70 / 0 %. Rule, written before the
# run: it becomes DOT_DENSE_CONFIG only if its sum over the four cases at 50 % is at least 1 % below the faster
# shipped sum, and no case at 50 % is slower than that case's slower shipped timing.
VARIANTS_DOT69 = {
    "dot dense (shipped)": _DOT_DENSE,
    "dot 32,256,2,8,3": _D(32, 256, 2, 8, 3),
    "dot dense (shipped) again": _DOT_DENSE,
}
# Kernel run 70 ("dot70"): run 69 met the rule above (sum 1.5 % lower, every case at 50 % faster), so 8 warps
# became DOT_DENSE_CONFIG; but at 70 % (30 % active) they lost 8-10 % on gate/up and gate+up. Layers take
# DOT_DENSE_CONFIG from 40 % active (DOT_DENSE_MIN_ACTIVE), so the band between is timed here, at 55 and 60 %
# sparsity, against run 68's 4 warps. Rule, written before the run: if at 60 % the 8 warps' sum over the four
# cases is more than 1 % above the 4 warps' (the faster of their two timings), 8 warps take layers only from 50 %
# active and 4 warps keep 40-50 %. Batch 2 and 8 at 50 % are timed for the record.
_DOT_DENSE_8 = _D(32, 256, 2, 8, 3)
VARIANTS_DOT70 = {
    "dot dense (shipped)": _DOT_DENSE_8,
    "dot 32,256,3,4,3 (run 68)": _DOT_DENSE,
    "dot dense (shipped) again": _DOT_DENSE_8,
}
# Outcome (results/run70_h100/dot8/dot70.md): at 60 % the faster 8-warp sum was 202.04 against 200.31 us, 0.9 %
# above, within the rule (the other 8-warp timing, 203.75, was 1.7 % above), so 8 warps keep 40-50 % active. At
# batch 8 they were 2.7 % faster; at batch 2 6.7 % slower (gate/up 40.66 against 36.54), so 2-3 tokens went back to
# 4 warps (sparse_linear.DOT_DENSE_WIDE_MIN_TOKENS).
# Kernel run 71 ("dot71"): Config.every_row, the batch launch loading every row of a step instead of the rows some
# token keeps, so that its row loads wait on no mask. At batch 4 and 50 % a step reads 94 % of its rows anyway, and
# at 0 % the launch streamed 5 % slower than cuBLAS (runs 69-70: 45.90-46.38 against 43.67-43.71 us on gate/up).
# Rule, written before the run: every_row joins DOT_DENSE_CONFIG if at batch 4 and 50 % its four-case sum is at
# least 1 % below the faster shipped sum with gate/up alone faster than the faster shipped timing, and at 0 % its
# sum is not above the slower shipped sum. Batch 8 at 50 % is timed for the record.
VARIANTS_DOT71 = {
    "dot dense (shipped)": _DOT_DENSE_8,
    "dot dense, every row": dataclasses.replace(_DOT_DENSE_8, every_row=True),
    "dot dense (shipped) again": _DOT_DENSE_8,
}
# Twenty-eighth session ("dot1", batch 1, commit c9aef16): one token through the tensor-core launch (a flag
# `sparse_linear.DOT_ONE_TOKEN`), whose pipeliner keeps `num_stages` steps of rows in flight through shared memory.
# Slower than the shipped one-token paths at every tile setting (at 50 % at best 1.36x on gate/up and 1.42x on down,
# against the shipped 1.51-1.56x and 1.43-1.50x);
# the flag and the set were removed again (results/sweep_run49_dot1_b1.*).
# Outcome (results/run71_h100/run71.md): at batch 4 and 50 % every_row's sum was 210.02 against 208.92 / 208.34 us,
# so the rule failed; but at 0 % it was 208.80 against 215.97 / 216.65 and at batch 8 (50 %) 215.29 against 221.59 /
# 221.51, every case faster both times. Where the tokens together keep nearly every row, every_row reads no more
# bytes and its loads wait on nothing; at batch 4 and 50 % it reads 6 % more. So sparse_linear.choose_config sets it
# where 1 - (1 - a) ** T >= EVERY_ROW_MIN_UNION (0.99), a limit drawn after run 71.
# Kernel run 72 ("dot72", 8 warps, 4 tokens and more; "dot72few", 4 warps, 2-3 tokens) checks that limit. Rule,
# written before the run: the limit stays if at every timed point where it sets every_row (0 % at 2, 3 and 4 tokens;
# 50 % at 7 and 8; 40 % at 6) every_row's four-case sum is not above the faster of the two plain sums, and at 0 % with
# 4 tokens and at 50 % with 8 it is at least 1 % below. If only the 2-3 token points fail, every_row is limited to 4
# tokens and more; if any other point fails, it goes off (EVERY_ROW_MIN_UNION above 1). The points just below the
# limit (50 % at 6 tokens, 98.4 % kept; 40 % at 5, 98.98 %) are timed for the record and move nothing.
# Outcome (results/run72_h100/run72.md): every point the limit covers met the rule (every row 2.5-3.7 % below the
# faster plain sum; 2.7 % at 0 % with 4 tokens, 2.8 % at 50 % with 8), so the limit stays; the two points below it
# were 2.1 and 2.3 % faster with every row as well. Kernel run 73 timed the same sets further below (its rule in
# results/run73_h100/next_device_call_652835a.sh): 0.5-0.8 % faster at 95.9-97.3 % kept, short of its 1 %, so the
# limit stays 0.99.
_DOT_DENSE_4 = _DOT_DENSE
VARIANTS_DOT72 = {
    "dot dense": _DOT_DENSE_8,
    "dot dense, every row": dataclasses.replace(_DOT_DENSE_8, every_row=True),
    "dot dense again": _DOT_DENSE_8,
}
VARIANTS_DOT72FEW = {
    "dot dense, 4 warps": _DOT_DENSE_4,
    "dot dense, 4 warps, every row": dataclasses.replace(_DOT_DENSE_4, every_row=True),
    "dot dense, 4 warps again": _DOT_DENSE_4,
}
# Kernel run 75 ("dot75", batch 4): narrower tiles. Gate/up alone stays at 0.95-0.99x of cuBLAS at batch 4, while the
# fused gate+up launch, the same rows twice over, streams about 9 % faster per byte (run 72 at 0 %, every row: 82.51 us
# for both halves against 45.46 for one); its items are twice as long (112 tiles of 256 columns, 2 chunks of 2048 rows,
# against gate/up's 56 tiles, 4 chunks of 1024 rows). 128-column tiles give gate/up the fused launch's item length and
# halve its split-K partial sums. Programs per multiprocessor are what fits (offline sm_90 build, Triton 3.6, bf16):
# 64x128 and 32x128 with 8 warps 113 and 118 registers (2 fit), 32x128 with 4 warps over 4 stages 128 (4 fit).
# Rule, written before the run: a setting replaces DOT_DENSE_CONFIG (4 tokens and more) only if at batch 4 its
# four-case sum is at least 1 % below the faster shipped sum at 50 % (plain loads, "dot75") and not above the slower
# shipped sum at 0 % (every row, "dot75er"); failing that, if on gate/up alone it is at least 2 % below the faster
# shipped timing at both points, it becomes the tile of single wide launches (gate/up alone) only.
VARIANTS_DOT75 = {
    "dot dense (shipped)": _DOT_DENSE_8,
    "dot 64,128,2,8,3": _D(64, 128, 2, 8, 3),
    "dot 32,128,2,8,4": _D(32, 128, 2, 8, 4),
    "dot 32,128,4,4,4": _D(32, 128, 4, 4, 4),
    "dot dense (shipped) again": _DOT_DENSE_8,
}
VARIANTS_DOT75ER = {name: dataclasses.replace(cfg, every_row=True) for name, cfg in VARIANTS_DOT75.items()}
# Outcome (results/run75_h100/run75.md): no setting passed. At 50 % the 128-column tiles took 1.4-1.8x the shipped
# time on every case (gate/up 62.27-76.00 against 43.36 us); at 0 % with every row 64x128 tied the shipped tiles
# (gate/up 44.14 against 43.88 / 44.38), so item length is not what holds gate/up back, and the masked row loads are.
# Kernel run 76 ("dot76", batch 4 at 50 %; "dot76er", every row at 0 %). Read off the offline sm_90 build with the
# item length specialised as the GPU's JIT does (tools/aot_check_splitk.py, DOT_DIV16): the masked loop
# issues the x and c loads three steps ahead and the row loads two steps ahead, but each step waits for its rows,
# reduces the token mask across the 8 warps and converts it to the row loads' layout (two more shared-memory round
# trips with barriers) before it issues the next rows; every_row has neither. So: a fourth stage (three steps of rows
# in flight; 128 registers, 2 programs per multiprocessor still fit), and 64-row steps with 16 warps (half the
# steps per byte; 106 registers, 1 program per multiprocessor). Rule, written before the run: a setting replaces
# DOT_DENSE_CONFIG (4 tokens and more) only if at batch 4 and 50 % its four-case sum is at least 1 % below the
# faster shipped sum with gate/up alone below the faster shipped timing, and at 0 % (every row) its sum is not above
# the slower shipped sum.
VARIANTS_DOT76 = {
    "dot dense (shipped)": _DOT_DENSE_8,
    "dot 32,256,2,8,4": _D(32, 256, 2, 8, 4),
    "dot 64,256,1,16,3": _D(64, 256, 1, 16, 3),
    "dot dense (shipped) again": _DOT_DENSE_8,
}
VARIANTS_DOT76ER = {name: dataclasses.replace(cfg, every_row=True) for name, cfg in VARIANTS_DOT76.items()}
# Outcome (kernel run 77 on an H100, results/run77_h100/run77.md): no setting passed. Four-case sums at 50 %, us:
# shipped 206.17 / 206.46, 4 stages 212.24, 64x256 with 16 warps 362.46; at 0 % with every row 209.28 / 208.23,
# 215.01 and 206.93.
# The next H200 run ("dot77", planned for runs 77-81, which got H100s). Run 76 (results/run76_h200/) put batch
# 4 at 50 % at 0.80x of cuBLAS on gate/up, 0.92x on down, 0.85x on gate+up and 1.29x on q/k/v + o, where run 49 (H200,
# 4 warps per program, masked loads) had 0.98x / 1.01x / 1.05x / 1.23x; the changes since were drawn on H100s: 8 warps
# from 4 tokens (run 70) and every_row from 99 % of rows kept (runs 71-73). So both, crossed, in one process. After
# this set was written, the same session found the launch compiling to the same TTGIR at run 50's commit and now
# (offline sm_90 build) and runs 49 and 76 agreeing within 2 % at 70 %, whose tiles did not change, and gave the H200
# the 4-warp tiles from any token count (sparse_linear.CARD_SETTINGS), untimed in one process. Rules, written before
# the run, for the H200 only: the 4-warp entry stays if at batch 4 and 50 % the 4 warps' four-case sum (masked loads,
# as shipped there) is not above the faster of the two 8-warp sums, and goes if it is more than 1 % above; between the
# two it stays and a later run decides. every_row sets in at a lower union as benchmarks/next_device_call.sh's rule
# (1) says.
VARIANTS_DOT77 = {
    "dot dense, 8 warps": _DOT_DENSE_8,
    "dot dense, 8 warps, every row": dataclasses.replace(_DOT_DENSE_8, every_row=True),
    "dot dense, 4 warps": _DOT_DENSE_4,
    "dot dense, 4 warps, every row": dataclasses.replace(_DOT_DENSE_4, every_row=True),
    "dot dense, 8 warps again": _DOT_DENSE_8,
}
VARIANT_SETS = {"dot26": VARIANTS_DOT26, "dot68": VARIANTS_DOT68, "dot69": VARIANTS_DOT69, "dot70": VARIANTS_DOT70, "dot71": VARIANTS_DOT71, "dot72": VARIANTS_DOT72, "dot72few": VARIANTS_DOT72FEW, "dot75": VARIANTS_DOT75, "dot75er": VARIANTS_DOT75ER, "dot76": VARIANTS_DOT76, "dot76er": VARIANTS_DOT76ER, "dot77": VARIANTS_DOT77, "run15": VARIANTS_RUN15, "run8": VARIANTS, "run9": VARIANTS_RUN9, "run10": VARIANTS_RUN10, "run10b": VARIANTS_RUN10B,
                "run10c": VARIANTS_RUN10C, "dot10": VARIANTS_DOT10, "lr10": VARIANTS_LR10, "dotlr10": VARIANTS_DOTLR10,
                "lr11": VARIANTS_LR11, "dotlr11": VARIANTS_DOTLR11, "lr11b": VARIANTS_LR11B, "lr11c": VARIANTS_LR11C, "lr11d": VARIANTS_LR11D,
                "lr12": VARIANTS_LR12, "lr12d": VARIANTS_LR12D, "dotlr12": VARIANTS_DOTLR12,
                "run13": VARIANTS_RUN13, "lr13b": VARIANTS_LR13B}
CASES = ["gate/up 4096->14336", "down 14336->4096", "gate+up fused 4096->2x14336", "qkv fused + o", "k/v 4096->1024",
         "q/o 4096->4096", "qkv fused 4096->4096+1024+1024"]


def emit(d, f):
    d["t"] = round(time.time() - T0, 1)
    line = json.dumps(d)
    print(line, flush=True)
    f.write(line + "\n")
    f.flush()


def build(name, s, gen, batch=1, rho=1.0):
    n, ms = B.CASES[name]
    with_o = name == "qkv fused + o"
    layer_bytes = n * sum(ms) * 2 + (4096 * 4096 * 2 if with_o else 0)
    copies = max(2, math.ceil(3 * B.L2_BYTES / layer_bytes))
    x = torch.randn(batch, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    layers, dense_w = [], []
    for _ in range(copies):
        mods, ws = zip(*[B.build_layer(n, m, s, rho, x, torch.bfloat16, "cuda", gen) for m in ms])
        if with_o:
            o, wo = B.build_layer(4096, 4096, s, rho, x, torch.bfloat16, "cuda", gen)
            mods, ws = mods + (o,), ws + (wo,)
        layers.append(mods)
        dense_w.append(ws)
    return x, layers, dense_w, with_o


def kernel_call(x, mods, with_o):
    # The layers' expected active share goes with every call, as the modules pass it (it picks
    # the path where no Config is forced, and sizes the low-rank items).
    args = lambda m: (m.weight_t, m.c, m.tau, m.lowrank_in, m.lowrank_out, m.bias)  # noqa: E731
    group = mods[:3] if with_o else mods
    share = max(m.expected_active_fraction() for m in group)
    call = lambda: torch.ops.rsparse.sparse_linear_multi(x, *[list(a) for a in zip(*[args(m) for m in group])], share)  # noqa: E731
    if with_o:
        return lambda: (call(), torch.ops.rsparse.sparse_linear(x, *args(mods[3]), mods[3].expected_active_fraction()))
    return call


def launch_shape(cfg, n, ms, rs=(), density=1.0, batch=1):
    """Grid of the (first) launch: programs, channel chunks, and whether inline falls back."""
    from rsparse.kernels import compact_gemv as CG

    if cfg is None:  # the shipped rules
        cfg = K.choose_config(n, sum(ms), batch > 1, 2, density, any(rs), tokens=batch,
                              card=K.card_name(torch.device("cuda")))
    per_proj = tuple(math.ceil(m / cfg.block_m) for m in ms)
    tiles = sum(per_proj)
    target = K._sm_count(torch.device("cuda")) * cfg.programs_per_sm
    if cfg.path == "splitk":  # run 4's launch (this reads the grid flags as the call did)
        ranks = tuple(rs) or (0,) * len(ms)
        rows, rows_lr = K._item_rows(n, per_proj, ranks, cfg.block_k, target, density)
        chunks = math.ceil(n / rows)
        lowrank = sum(math.ceil(r / rows_lr) * t for r, t in zip(ranks, per_proj))
        z_items = 0
        if K.Z_ITEMS and batch == 1 and any(ranks):  # z items of their own (kernel run 11)
            rows_z = K.z_item_rows(cfg, rows)
            z_items = math.ceil(n / rows_z) * sum(math.ceil(r / cfg.block_r) for r in ranks)
        return {"programs": z_items + chunks * tiles + lowrank, "chunks": chunks, "rows": rows, "rows_lr": rows_lr,
                "z_items": z_items, "fallback": False, "path": cfg.path, "per_sm": cfg.programs_per_sm}
    chunks = max(1, min(math.ceil(n / cfg.block_k), target // tiles))
    rows = math.ceil(n / chunks)
    fallback = cfg.path == "inline" and 1 << (rows - 1).bit_length() > CG.INLINE_MAX_CHUNK
    return {"programs": chunks * tiles, "chunks": chunks, "rows": rows, "fallback": fallback, "path": cfg.path}


def compiled_kernels() -> dict:
    """Registers and spills of every Triton kernel compiled so far (key -> facts), to tell a
    slow setting that spills or lost occupancy from one that is slow for other reasons."""
    from rsparse.kernels import compact_gemv as CG

    out = {}
    for fn in (K._splitk_kernel, CG._compact_kernel, CG._gather_kernel, CG._inline_kernel):
        for caches in getattr(fn, "device_caches", {}).values():
            for key, k in caches[0].items():
                try:
                    out[f"{fn.__name__}:{hash(key)}"] = {"kernel": fn.__name__, "warps": k.metadata.num_warps,
                                                         "regs": k.n_regs, "spills": k.n_spills}
                except Exception as e:  # facts are a bonus, never a failure
                    out[f"{fn.__name__}:{hash(key)}"] = {"kernel": fn.__name__, "error": repr(e)[:100]}
    return out


def max_err(x, mods):
    errs = []
    for m in mods:
        a = (m.weight_t, m.c, m.tau, m.lowrank_in, m.lowrank_out, m.bias)
        ref = sparse_linear_reference(x, *a).double()
        y = torch.ops.rsparse.sparse_linear(x, *a, m.expected_active_fraction())
        errs.append(((y.double() - ref).norm() / ref.norm()).item())
    return max(errs)


def render(jsonl: Path) -> str:
    """Markdown table (µs, speed-up over cuBLAS of the same row) from an inline.jsonl."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    head = rows[0]
    batch = head.get("batch", 1)
    rho = head.get("rho", 1.0)
    names = [k for k in rows[1] if isinstance(rows[1][k], dict)]
    out = [f"{head['device']}, torch {head['torch']}, Triton {head.get('triton', '?')}, bf16, batch {batch}, rho {rho}; "
           f"median µs per call under CUDA-graph replay (weights rotated beyond L2), speed-up over cuBLAS in brackets.", "",
           "| case | sparsity | cuBLAS | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for r in rows[1:]:
        if "case" not in r:
            continue
        cells = [f"{r[n]['us']} ({r[n]['speedup']:.2f}×)" if "us" in r.get(n, {}) else "error" for n in names]
        out.append(f"| {r['case']} | {r['sparsity']} | {r['dense_us']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--render", metavar="JSONL", help="only print the markdown table of a previous run")
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--limit", type=float, default=300.0)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--cases", nargs="+", default=CASES)
    p.add_argument("--variants", choices=sorted(VARIANT_SETS), default="run8", help="which set of launch settings to time")
    p.add_argument("--rho", type=float, default=1.0, help="sparse share of every layer's budget (< 1: a low-rank path)")
    p.add_argument("--batch", type=int, default=1, help="tokens per call (2-16 take the tl.dot launch: use --variants dot10)")
    a = p.parse_args()
    if a.render:
        print(render(Path(a.render)), end="")
        return
    rsparse.set_backend("triton")
    f = open(Path(a.out) / "inline.jsonl", "w")
    props = torch.cuda.get_device_properties(0)
    import triton

    emit({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
          "sms": props.multi_processor_count, "reps": a.reps, "batch": a.batch, "rho": a.rho, "variants": a.variants}, f)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for s in a.sparsities:
        for name in a.cases:
            if time.time() - T0 > a.limit:
                emit({"stopped": "time limit", "before": [name, s]}, f)
                return
            x, layers, dense_w, with_o = build(name, s, gen, a.batch, a.rho)
            dense = B.graph_time_us([lambda ws=ws: [F.linear(x, w) for w in ws] for ws in dense_w], a.reps)
            row = {"case": name, "sparsity": s, "dense_us": round(dense, 2), "copies": len(layers)}
            for v, spec in VARIANT_SETS[a.variants].items():
                cfg, flags = spec if isinstance(spec, tuple) else (spec, {})
                kind = "gemv1" if a.batch == 1 else "dot"
                K.set_config(cfg, kind)
                K.PERSISTENT_WORKSPACE = v != "run4 memset"
                saved = {flag: getattr(K, flag) for flag in flags}
                for flag, value in flags.items():
                    setattr(K, flag, value)
                before = compiled_kernels()
                try:
                    us = B.graph_time_us([kernel_call(x, m, with_o) for m in layers], a.reps)
                    row[v] = {"us": round(us, 2), "speedup": round(dense / us, 3), "err": max_err(x, layers[0]),
                              **launch_shape(cfg, x.shape[1], [m.out_features for m in layers[0][:3]],
                                           [m.lowrank_in.shape[1] for m in layers[0][:3]],
                                           1.0 if a.batch > 1 else max(m.expected_active_fraction() for m in layers[0][:3]),
                                           a.batch)}
                    new = [facts for key, facts in compiled_kernels().items() if key not in before]
                    if new:
                        row[v]["compiled"] = new
                except Exception as e:  # a variant that fails is a data point too
                    row[v] = {"error": repr(e)[:300]}
                for flag, value in saved.items():
                    setattr(K, flag, value)
                K.set_config(None, kind)
                K.PERSISTENT_WORKSPACE = True
            emit(row, f)
            del layers, dense_w
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
