"""Device sweep for the one-wave split-K kernel: GPU correctness first, then tile configurations
timed on the big Llama shapes (CUDA-graph replay, cold weights); prints JSON lines.

    python benchmarks/sweep_splitk.py --out $OUT
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_speed as B  # noqa: E402
from rsparse.kernels import sparse_linear as K  # noqa: E402
import rsparse  # noqa: E402

T0 = time.time()
LIMIT = float(os.environ.get("SWEEP_LIMIT_S", "200"))


def emit(d, f):
    d["t"] = round(time.time() - T0, 1)
    line = json.dumps(d)
    print(line, flush=True)
    f.write(line + "\n")
    f.flush()


def correctness(f):
    from test_kernels import make_args, check
    bad = 0
    for (T, n, m, r, bias, act) in [(1, 4096, 4096, 0, False, 0.5), (1, 4096, 1024, 64, True, 0.4), (4, 4096, 14336, 300, False, 0.4),
                                    (7, 1000, 3001, 0, True, 0.3), (1, 14336, 4096, 128, False, 0.2), (5, 777, 333, 31, True, 0.7),
                                    (17, 513, 1025, 9, False, 0.5), (1, 513, 1025, 9, True, 0.0), (4, 300, 70, 5, True, 1.0)]:
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            try:
                check(make_args(T, n, m, r, dt, "cuda", act, bias, seed=1), dt, "cuda")
                ok = "pass"
            except Exception as e:
                ok = repr(e)[:200]
                bad += 1
            emit({"check": [T, n, m, r, bias, act, str(dt)], "result": ok}, f)
    return bad


def layers_for(n, m, s, rho, T, gen):
    dtype, device = torch.bfloat16, "cuda"
    x = torch.randn(T, n, device=device, dtype=dtype, generator=gen)
    copies = max(2, math.ceil(3 * B.L2_BYTES / (n * m * 2)))
    mods = [B.build_layer(n, m, s, rho, x, dtype, device, gen)[0] for _ in range(copies)]
    return x, mods


def time_kernel(x, mods, reps):
    fns = [lambda mod=mod: K.sparse_linear(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias) for mod in mods]
    return B.graph_time_us(fns, reps)


def err_of(x, mod):
    from rsparse.ops import sparse_linear_reference
    ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias).double()
    y = K.sparse_linear(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias)
    return ((y.double() - ref).norm() / ref.norm()).item()


GEMV1 = [  # block_k, block_m, pps, warps, stages, acc2d
    (8, 1024, 2, 4, 1, False), (8, 1024, 2, 4, 1, True), (16, 1024, 2, 4, 1, False), (8, 1024, 1, 4, 1, False),
    (8, 1024, 4, 4, 1, False), (8, 1024, 8, 4, 1, False), (8, 1024, 2, 4, 3, False), (4, 1024, 2, 4, 1, False),
    (16, 512, 2, 4, 1, False), (8, 2048, 2, 8, 1, False), (32, 1024, 2, 8, 1, False), (16, 1024, 4, 4, 2, False),
]
DOT = [(32, 256, 2, 4, 3), (32, 512, 2, 4, 3), (64, 256, 2, 4, 3), (32, 256, 4, 4, 3), (16, 512, 2, 4, 4), (32, 256, 2, 4, 1),
       (64, 512, 2, 8, 3), (32, 1024, 2, 8, 3)]
SHAPES = [(4096, 14336), (14336, 4096)]


def warm(spec):
    # Compile the kernel variants of one dtype and token count into Triton's disk cache
    # (several such processes in parallel shorten a fresh machine's test run).
    dt, T = getattr(torch, spec.split(":")[0]), int(spec.split(":")[1])
    from test_kernels import make_args
    for bias in (False, True):
        K.sparse_linear(*make_args(T, 64, 64, 4, dt, "cuda", 0.5, bias))
    torch.cuda.synchronize()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--warm":
        return warm(sys.argv[2])
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    rsparse.set_backend("triton")
    f = open(Path(a.out) / "sweep.jsonl", "w")
    emit({"device": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count}, f)
    emit({"correctness_failures": correctness(f)}, f)
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = {}
    for (n, m) in SHAPES:  # dense reference and the layers, built once per point
        for (s, rho, T) in [(0.5, 1.0, 1), (0.7, 1.0, 1), (0.5, 0.8, 1), (0.5, 1.0, 4), (0.5, 0.8, 4)]:
            x, mods = layers_for(n, m, s, rho, T, gen)
            dw = [torch.randn(m, n, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(len(mods))]
            dense = B.graph_time_us([lambda w=w: torch.nn.functional.linear(x, w) for w in dw], a.reps)
            del dw
            data[(n, m, s, rho, T)] = (x, mods, dense)
            emit({"point": [n, m, s, rho, T], "dense_us": round(dense, 2)}, f)
    totals = {}
    for cfgt in GEMV1:
        if time.time() - T0 > LIMIT:
            break
        bk, bm, pps, nw, st, acc2d = cfgt
        K.set_config(K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st, acc2d=acc2d), "gemv1")
        tot = 0
        for key in [(n, m, 0.5, 1.0, 1) for n, m in SHAPES]:
            x, mods, dense = data[key]
            try:
                us = time_kernel(x, mods, a.reps)
                e = err_of(x, mods[0])
                emit({"kind": "gemv1", "cfg": cfgt, "point": key, "us": round(us, 2), "speedup": round(dense / us, 3), "err": e}, f)
                tot += us
            except Exception as ex:
                emit({"kind": "gemv1", "cfg": cfgt, "point": key, "error": repr(ex)[:300]}, f)
                tot = float("inf")
        totals[cfgt] = tot
    best = min(totals, key=totals.get)
    bk, bm, pps, nw, st, acc2d = best
    emit({"best_gemv1": best}, f)
    for br in (64, 128):
        K.set_config(K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st, acc2d=acc2d, block_r=br), "gemv1")
        for key in data:
            if key[4] != 1 or (br == 128 and key[3] == 1.0):
                continue
            x, mods, dense = data[key]
            try:
                us = time_kernel(x, mods, a.reps)
                emit({"kind": "gemv1", "cfg": best, "block_r": br, "point": key, "us": round(us, 2), "speedup": round(dense / us, 3), "err": err_of(x, mods[0])}, f)
            except Exception as ex:
                emit({"kind": "gemv1", "cfg": best, "block_r": br, "point": key, "error": repr(ex)[:300]}, f)
    totals = {}
    for cfgt in DOT:
        if time.time() - T0 > LIMIT + 60:
            break
        bk, bm, pps, nw, st = cfgt
        K.set_config(K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st), "dot")
        tot = 0
        for key in [(n, m, 0.5, r, 4) for n, m in SHAPES for r in (1.0, 0.8)]:
            x, mods, dense = data[key]
            try:
                us = time_kernel(x, mods, a.reps)
                emit({"kind": "dot", "cfg": cfgt, "point": key, "us": round(us, 2), "speedup": round(dense / us, 3), "err": err_of(x, mods[0])}, f)
                tot += us
            except Exception as ex:
                emit({"kind": "dot", "cfg": cfgt, "point": key, "error": repr(ex)[:300]}, f)
                tot = float("inf")
        totals[cfgt] = tot
    emit({"best_dot": min(totals, key=totals.get), "totals": {str(k): v for k, v in totals.items()}}, f)


if __name__ == "__main__":
    main()
