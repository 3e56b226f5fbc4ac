"""Second device call of the ncu profile (2026-11-30): wave quantisation and DRAM timeline.

t      CUDA-graph timing (2 weight copies >= 3x L2, 20 replays, median; three medians) of the
       compact path called directly through `compact_gemv` with the adopted tiles (block_k 8,
       block_m 512, 2 warps, prefetch 1) but other grid sizes: `sm_count` 132 (as shipped:
       4096->14336 gets 38 slices x 28 tiles = 1064 programs for 1056 slots, 1.01 waves) or 131
       (37 slices = 1036 programs, one wave), 4 programs/SM, and 256-column tiles with 1 warp at
       16 programs/SM; plus cuBLAS on half the input channels (same bytes as the 50 % case).
n      the same kernels once each per shape between cudaProfilerStart/Stop, for ncu --section PmSampling.
dump F print the PM-sampling time series of report F (ncu_report, on the device).

    PYTHONPATH=$PWD/src python3 benchmarks/profile_gemv_pm.py t
"""
import glob
import sys

M = sys.argv[1]
if M == "dump":
    sys.path += glob.glob("/opt/nvidia/nsight-compute/*/extras/python") + glob.glob("/usr/local/cuda*/nsight-compute*/extras/python")
    import ncu_report as R

    rg = R.load_report(sys.argv[2]).range_by_idx(0)
    for i in range(rg.num_actions()):
        a = rg.action_by_idx(i)
        for k in a.metric_names():
            if k.startswith("pmsampling:") and a[k].num_instances() > 1:
                m = a[k]
                c = m.correlation_ids() if m.has_correlation_ids() else None
                v = [m.as_double(j) for j in range(m.num_instances())]
                ts = [c.as_uint64(j) for j in range(m.num_instances())] if c else []
                print(i, a.name(), k, "t", *ts, "v", *[round(x, 2) for x in v], sep=",")
    sys.exit()
import json

import torch
import torch.nn.functional as F

sys.path[:0] = ["src", "benchmarks"]
import kernel_speed as B  # noqa: E402
import rsparse  # noqa: E402
from rsparse.kernels import compact_gemv as G  # noqa: E402

rsparse.set_backend("triton")
g = torch.Generator("cuda").manual_seed(0)
T = M == "t"
# name -> (sm_count, programs_per_sm, block_m, num_warps)
V = dict(sm132=(132, 8, 512, 2), sm131=(131, 8, 512, 2), pps4=(132, 4, 512, 2), bm256=(132, 16, 256, 1))


def cg(x, d, sm, pps, bm, nw):
    o = torch.empty(1, d.weight_t.shape[1], device="cuda", dtype=x.dtype)
    return lambda: G.compact_gemv(x, [d.weight_t], [d.c], [d.tau], [d.lowrank_in], [d.lowrank_out], [d.bias], [o], sm,
                                  block_k=8, block_m=bm, programs_per_sm=pps, num_warps=nw, prefetch=1)


cases = []
for n, m in (4096, 14336), (14336, 4096):
    x = torch.randn(1, n, device="cuda", dtype=torch.bfloat16, generator=g)
    h = x[:, : n // 2].contiguous()
    L = [B.build_layer(n, m, 0.5, 1.0, x, torch.bfloat16, "cuda", g) for _ in range(2 if T else 1)]
    fs = dict(dense_half=[lambda h=h, w=w[:, : n // 2].contiguous(): F.linear(h, w) for d, w in L])
    for k, v in V.items():
        fs[k] = [cg(x, d, *v) for d, w in L]
    cases.append((f"{n}x{m}", fs))
for j in range(1 + (not T)):  # ncu: pass 0 warms up, pass 1 is profiled
    if j:
        torch.cuda.profiler.start()
    for s, fs in cases:
        for k, f in fs.items():
            if T:
                print(json.dumps(dict(shape=s, variant=k, us=[round(B.graph_time_us(f, 20), 2) for _ in range(3)])), flush=True)
            else:
                f[0]()
        torch.cuda.synchronize()
torch.cuda.profiler.stop()
