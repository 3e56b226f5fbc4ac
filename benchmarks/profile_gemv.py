"""ncu profile of the batch-1 sparse GEMV kernels at 50 % active channels (H200), issue 5.

bf16, batch 1, rho 1, shapes 4096->14336 and 14336->4096; layers from `kernels.build_layer`
(random weights, c = column norms, tau = quantile of |x|*c keeping half the channels).
Variants: dense (cuBLAS F.linear), dense_half (cuBLAS on the first n/2 input channels: the
same weight bytes as the 50 % case), run4 (one-launch split-K kernel, 8,1024,4,4), compact
(two-launch path, forced: block_k 8, block_m 512, 8 programs/SM, 2 warps, prefetch 1 = what
`choose_config` picks at <= 35 % active), compact_pf2 (8,512,6,2, prefetch 2), compact_pdl
(compact + programmatic dependent launch).

  python3 benchmarks/profile_gemv.py t      CUDA-graph timing (2 weight copies >= 3x L2, 20
                                            replays, median; three medians per variant), error
                                            vs the fp64 reference
  python3 benchmarks/profile_gemv.py n ITERS  dense, dense_half, run4, compact, compact_pf2
                                            ITERS times per shape, each call in an NVTX range
                                            "variant|nxm|i"; once to warm up, then again between
                                            cudaProfilerStart/Stop (ncu --profile-from-start off)

Run from the repository root; benchmarks/profile_gemv.sh is the whole device call.  The
device tool sends the session's main checkout, not this worktree, so the call shipped this
file and the .sh inside the command (docstrings and comments stripped, zlib, base85).
"""
import json
import sys

import torch
import torch.nn.functional as F

sys.path[:0] = ["src", "benchmarks"]
import kernel_speed as B  # noqa: E402
import rsparse  # noqa: E402
from rsparse.kernels import sparse_linear as K  # noqa: E402
from rsparse.ops import sparse_linear_reference as ref  # noqa: E402

rsparse.set_backend("triton")
C = dict(path="compact", block_k=8, block_m=512, programs_per_sm=8, num_warps=2, prefetch=1)
S = dict(run4=dict(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4), compact=C,
         compact_pf2=dict(C, programs_per_sm=6, prefetch=2), compact_pdl=dict(C, pdl=True))
T = sys.argv[1] == "t"
g = torch.Generator("cuda").manual_seed(0)


def sp(c, x, d):
    c = K.Config(**c)

    def f():
        K.set_config(c, "gemv1")
        return K.sparse_linear(x, d.weight_t, d.c, d.tau, d.lowrank_in, d.lowrank_out, d.bias)
    return f


cases = []
for n, m in (4096, 14336), (14336, 4096):
    x = torch.randn(1, n, device="cuda", dtype=torch.bfloat16, generator=g)
    h = x[:, : n // 2].contiguous()
    L = [B.build_layer(n, m, 0.5, 1.0, x, torch.bfloat16, "cuda", g) for _ in range(2 if T else 1)]
    H = [w[:, : n // 2].contiguous() for d, w in L]
    act = [int((x.abs().float() * d.c > d.tau).sum()) for d, w in L]  # active channels per copy
    V = dict(dense=[lambda x=x, w=w: F.linear(x, w) for d, w in L], dense_half=[lambda h=h, w=w: F.linear(h, w) for w in H])
    for k, c in S.items():
        V[k] = [sp(c, x, d) for d, w in L]
    cases.append((f"{n}x{m}", x, L, act, V))

if T:
    print(torch.__version__, __import__("triton").__version__)
    for s, x, L, act, V in cases:
        d = L[0][0]
        r = ref(x, d.weight_t, d.c, d.tau, d.lowrank_in, d.lowrank_out, d.bias).double()
        for k, fs in V.items():
            us = [round(B.graph_time_us(fs, 20), 2) for _ in range(3)]
            e = None if "dense" in k else ((fs[0]().double() - r).norm() / r.norm()).item()
            print(json.dumps(dict(shape=s, variant=k, us=us, active=act, err=e)), flush=True)
else:
    for j in 0, 1:  # pass 0 warms up (compiles, cuBLAS heuristics); pass 1 is profiled
        if j:
            torch.cuda.profiler.start()
        for s, x, L, act, V in cases:
            for k in "dense", "dense_half", "run4", "compact", "compact_pf2":
                for i in range(int(sys.argv[2])):
                    torch.cuda.nvtx.range_push(f"{k}|{s}|{i}")
                    V[k][0]()
                    torch.cuda.nvtx.range_pop()
                torch.cuda.synchronize()
    torch.cuda.profiler.stop()
