"""Issue 5 diagnosis of the batched-launch race (see `batched_race.py`): 12 calls per case with the
persistent workspace and 3, 2 or 1 pipeline stages, with a fresh zeroed workspace per call, with 8
warps and with 256-column tiles; prints the failing calls per projection and the non-zero words left in
the workspace. Run before the fix (2026-12-01); its output is quoted in benchmarks/NOTES.md, kernel run 16.

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/batched_race_settings.py
"""
import torch, rsparse
from rsparse.kernels import sparse_linear as K, compact_gemv as C
from rsparse.ops.fused import sparse_linear_multi_reference as ref
from rsparse.nn import column_norms
torch.manual_seed(0)
def layers(n, ms, dtype=torch.bfloat16):
    ws = [torch.randn(n, m, device="cuda", dtype=dtype) / n**0.5 for m in ms]
    return ws, [column_norms(w.t()) for w in ws]
def trial(T, n, ms, ws, cs, active=0.3, dtype=torch.bfloat16, check_ws=False):
    x = torch.randn(T, n, device="cuda", dtype=dtype)
    taus = [torch.quantile((x.float().abs() * c).flatten(), 1 - active).reshape(()) for c in cs]
    lis = [torch.zeros(n, 0, device="cuda", dtype=dtype) for _ in ms]; los = [torch.zeros(0, m, device="cuda", dtype=dtype) for m in ms]
    bs = [None for _ in ms]
    got = K.sparse_linear_multi(x, ws, cs, taus, lis, los, bs, active_fraction=active)
    want = ref(x, ws, cs, taus, lis, los, bs)
    bad = [int(((g.float() - w.float()).abs().max() / w.float().abs().max()).item() > 0.05) for g, w in zip(got, want)]
    nz = int((C._WORKSPACE[("cuda", 0)] != 0).sum().item()) if check_ws and ("cuda", 0) in C._WORKSPACE else -1
    return bad, nz
def run(label, reps=12):
    for T, ms in ((2, [8192, 8192]), (4, [14336, 14336]), (4, [4096, 1024, 1024])):
        ws, cs = layers(4096, ms)
        fails = [0] * len(ms); nzs = []
        for _ in range(reps):
            bad, nz = trial(T, 4096, ms, ws, cs, check_ws=True)
            fails = [a + b for a, b in zip(fails, bad)]; nzs.append(nz)
        print(f"{label}: T={T} ms={ms}: failures per projection {fails} of {reps}; nonzero workspace words after calls {sorted(set(nzs))}", flush=True)
run("default (persistent workspace, 3 stages)")
for stages in (1, 2):
    K.set_config(K.Config(block_k=16, block_m=512, programs_per_sm=3, num_warps=4, num_stages=stages), "dot")
    run(f"num_stages={stages}")
K.set_config(None, "dot")
K.PERSISTENT_WORKSPACE = False
run("fresh zeroed workspace per call")
K.PERSISTENT_WORKSPACE = True
K.set_config(K.Config(block_k=16, block_m=512, programs_per_sm=3, num_warps=8, num_stages=3), "dot")
run("num_warps=8")
K.set_config(K.Config(block_k=16, block_m=256, programs_per_sm=3, num_warps=4, num_stages=3), "dot")
run("block_m=256")
