"""Why the one-token launch with packed 4-bit factors is slow (kernel run 50: gate/up at 50 %, rho 0.8,
201 us against 23.7 us with bf16 factors). Separates the rank (4-bit factors buy four times the rank at
equal bytes) from the unpacking, and times z-item tile variants, on one layer per shape:

* bf16 factors at the bf16 budget's rank and at the 4-bit budget's rank;
* packed factors at both ranks;
* packed factors at the 4-bit rank under forced one-token configs (block_r, z_steps, block_kz);
* ``--aligned``: packed factors at the 4-bit rank, that rank rounded down to multiples of 16 and 64, and one more
  (V_r's row stride is the rank: the JIT vectorises its byte loads only when it is a multiple of 16).

Every row is checked against the PyTorch reference once.  GPU only; prints JSON lines and writes them to
``--out``/packed_one_token.jsonl.

    python benchmarks/ablations/packed_one_token.py --out $OUT
"""
import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import L2_BYTES, alternating_us, build_layer  # noqa: E402

SHAPES = {"gate/up": (4096, 14336), "down": (14336, 4096)}


def build(n, m, s, rho, rank, bits, x, gen):
    """`kernel_speed.build_layer` at ``rank`` (the budget's channels) with ``bits``-bit factors."""
    return build_layer(n, m, s, rho, x, x.dtype, x.device, gen, bits, rank=rank)[0]


def rel_err(mod, x):
    from rsparse.ops import sparse_linear_reference

    tensors = (mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias)
    ref = sparse_linear_reference(x, *tensors, None, mod.factor_ranges()).double()
    y = mod(x).double()
    return ((y - ref).norm() / ref.norm()).item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    p.add_argument("--aligned", action="store_true",
                   help="only packed factors at the 4-bit rank and at that rank rounded to multiples of 16 and 64 "
                        "(is V_r's row stride, the rank, worth aligning for 16-byte loads?)")
    args = p.parse_args()
    import rsparse
    from rsparse.budget import layer_budget
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    s, rho = 0.5, 0.8
    out = open(Path(args.out) / "packed_one_token.jsonl", "w")
    for name, (n, m) in SHAPES.items():
        r16, r4 = layer_budget(n, m, s, rho, 16).r, layer_budget(n, m, s, rho, 4).r
        base = K.choose_config(n, m, False, 2, rho * (1 - s), True, True)
        forced = {
            "block_r=256": dataclasses.replace(base, block_r=256),
            "block_r=512": dataclasses.replace(base, block_r=512),
            "z_steps=16": dataclasses.replace(base, z_steps=16),
            "z_steps=16,block_r=256": dataclasses.replace(base, z_steps=16, block_r=256),
            "block_kz=32,block_r=64": dataclasses.replace(base, block_kz=32, block_r=64),
            "per_sm=2": dataclasses.replace(base, programs_per_sm=2),
        }
        for T in args.batches:
            x = torch.randn(T, n, device="cuda", dtype=torch.bfloat16, generator=gen)
            variants = [("bf16", r16, 16, None), ("bf16", r4, 16, None), ("packed", r16, 4, None), ("packed", r4, 4, None)]
            if args.aligned:
                variants = [("packed", r, 4, None) for r in (r4, r4 // 16 * 16, r4 // 64 * 64, r4 + 1)]
            elif T == 1:
                variants += [("packed", r4, 4, k) for k in forced]
            for label, rank, bits, cfg_name in variants:
                copies = max(2, math.ceil(3 * L2_BYTES / (n * m * 2)))
                mods = [build(n, m, s, rho, rank, bits, x, gen) for _ in range(copies)]
                K.set_config(forced[cfg_name] if cfg_name else None, "gemv1")
                try:
                    err = rel_err(mods[0], x)
                    us = alternating_us({"m": [lambda md=md: md(x) for md in mods]}, copies, args.reps, args.rounds)["m"]
                    row = {"shape": name, "batch": T, "factors": label, "rank": rank, "config": cfg_name or "default",
                           "us": round(statistics.median(us), 2), "us_rounds": [round(u, 2) for u in us], "rel_err": err}
                except Exception as e:  # a variant that fails is a finding, not the end of the run
                    row = {"shape": name, "batch": T, "factors": label, "rank": rank, "config": cfg_name or "default",
                           "error": repr(e)[:300]}
                finally:
                    K.set_config(None, "gemv1")
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                del mods
    out.close()
    if args.aligned:
        return
    # Which CUDA kernels one packed call launches, and their times (is it all the split-K kernel?)
    n, m = SHAPES["gate/up"]
    x = torch.randn(1, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    mod = build(n, m, s, rho, layer_budget(n, m, s, rho, 4).r, 4, x, gen)
    for _ in range(3):
        mod(x)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            mod(x)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    main()
