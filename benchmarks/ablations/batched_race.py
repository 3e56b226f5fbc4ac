"""Issue 5 regression check: the batched (2-16 token) launch of a fused group, every call against the rule.

Found on 2026-12-01 (sixth session): with the persistent workspace, the last program of a tile loaded
its split-K sums and zeroed them with no barrier in between; in the batched launch of two wide
projections (gate+up at 8192 or 14336 columns) the compiler laid the zero store over other threads
than the load, and the second projection's outputs read zeros at random. This script runs 8 calls
of each (tokens, widths) case in bf16 against `sparse_linear_multi_reference` (a call fails above
3 % relative error in any projection) and times the batch-4 launches at 50 % against cuBLAS under
CUDA graphs, for the shipped tiles and candidate settings (``stages3``, ``stages1``, ``stages2``,
``warps8``; the arguments after the output file pick some).

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/batched_race.py out.json [stages3 ...]

Results: ``results/batched_race_before.json`` (before the barrier, every setting) and
``results/batched_race_after.json`` (with it, shipped tiles); benchmarks/NOTES.md, kernel run 16.
"""
import json, sys, torch, rsparse
from rsparse.kernels import sparse_linear as K
from rsparse.ops.fused import sparse_linear_multi_reference as ref
from rsparse.nn import column_norms
torch.manual_seed(0)
dt = torch.bfloat16
def layers(n, ms, copies=1):
    ws = [[torch.randn(n, m, device="cuda", dtype=dt) / n**0.5 for m in ms] for _ in range(copies)]
    return ws, [column_norms(w.t()) for w in ws[0]]
def args(T, n, ms, cs, active):
    x = torch.randn(T, n, device="cuda", dtype=dt)
    taus = [torch.quantile((x.float().abs() * c).flatten(), 1 - active).reshape(()) for c in cs]
    lis = [torch.zeros(n, 0, device="cuda", dtype=dt) for _ in ms]; los = [torch.zeros(0, m, device="cuda", dtype=dt) for m in ms]
    return x, taus, lis, los, [None] * len(ms)
SETTINGS = {"stages3 (shipped)": dict(num_stages=3, num_warps=4), "stages1": dict(num_stages=1, num_warps=4),
            "stages2": dict(num_stages=2, num_warps=4), "warps8 stages3": dict(num_stages=3, num_warps=8)}
out = {}
only = sys.argv[2:] or list(SETTINGS)
for name, kw in ((k, v) for k, v in SETTINGS.items() if k.split()[0] in [o.split()[0] for o in only]):
    K.set_config(K.Config(block_k=16, block_m=512, programs_per_sm=3, **kw), "dot")
    fails = {}
    for T in (2, 3, 4, 8):
        for ms in ([8192, 8192], [14336, 14336], [4096, 1024, 1024], [14336], [1024, 1024]):
            ws, cs = layers(4096, ms)
            f = 0
            for _ in range(8):
                x, taus, lis, los, bs = args(T, 4096, ms, cs, 0.5)
                got = K.sparse_linear_multi(x, ws[0], cs, taus, lis, los, bs, active_fraction=0.5)
                want = ref(x, ws[0], cs, taus, lis, los, bs)
                f += any(((g.float() - w.float()).abs().max() / w.float().abs().max()).item() > 0.03 for g, w in zip(got, want))
            fails[f"T{T} {ms}"] = f
    times = {}
    for label, n, ms in (("gate/up 4096->14336", 4096, [14336]), ("down 14336->4096", 14336, [4096]),
                         ("q/o 4096->4096", 4096, [4096]), ("gate+up fused", 4096, [14336, 14336]),
                         ("q/k/v fused", 4096, [4096, 1024, 1024])):
        copies = 3 if n * sum(ms) < 40e6 else 1
        ws, cs = layers(n, ms, copies)
        x, taus, lis, los, bs = args(4, n, ms, cs, 0.5)
        for c in range(copies):
            K.sparse_linear_multi(x, ws[c], cs, taus, lis, los, bs, active_fraction=0.5)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(20):
                K.sparse_linear_multi(x, ws[i % copies], cs, taus, lis, los, bs, active_fraction=0.5)
        dense = [[w.t().contiguous() for w in cw] for cw in ws]
        gd = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gd):
            for i in range(20):
                for w in dense[i % copies]:
                    torch.nn.functional.linear(x, w)
        res = []
        for graph in (g, gd):
            meds = []
            for _ in range(5):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                graph.replay(); s.record(); graph.replay(); e.record(); torch.cuda.synchronize()
                meds.append(s.elapsed_time(e) * 1000 / 20)
            res.append(sorted(meds)[2])
        times[label] = {"us": round(res[0], 2), "cublas_us": round(res[1], 2), "vs_cublas": round(res[1] / res[0], 3)}
    out[name] = {"failed_calls_of_8": fails, "batch4_50pct": times}
    print(name, json.dumps(out[name]), flush=True)
K.set_config(None, "dot")
json.dump(out, open(sys.argv[1], "w"), indent=1)
