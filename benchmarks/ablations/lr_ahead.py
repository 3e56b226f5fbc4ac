"""One token's low-rank items with and without their next step loaded ahead (`LR_AHEAD`), against rho 1 and cuBLAS
dense in the same run.  GPU only.

The low-rank items of the one-token split-K launch wait for z, so they run last, as a tail after the weight items,
and each of their steps was a memory round trip: packed items 1, 2, 4 and 8 times as long took gate/up 36.6, 43.9,
52.3 and 77.5 us (H100, thirty-third session).  Here every variant runs on the same layers (50 %, batch 1, bf16
activations), each in its own CUDA graph, timed in turn round after round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path; what acceptance 3 compares with);
* ``bf16`` / ``bf16_ahead``: rho 0.8 with bf16 factors, `LR_AHEAD` off / on;
* ``4bit`` / ``4bit_ahead`` / ``4bit_mantissa``: rho 0.8 with packed 4-bit factors (the default), `LR_AHEAD` 0 / 1 / 2
  (2: the levels read as mantissa bits, the offsets summed once per step);
* ``4bit_mantissa_x0.5`` / ``4bit_mantissa_x2``: 2, with packed items half / twice as long
  (`PACKED_LOWRANK_ROWS_SCALE`);
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/lr_ahead.jsonl.

    python benchmarks/ablations/lr_ahead.py --out $OUT
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, L2_BYTES, alternating_us, build_layer  # noqa: E402

# name: (rho, factor bits, LR_AHEAD, PACKED_LOWRANK_ROWS_SCALE)
VARIANTS = {
    "rho1": (1.0, 16, 0, 1),
    "bf16": (0.8, 16, 0, 1),
    "bf16_ahead": (0.8, 16, 1, 1),
    "4bit": (0.8, 4, 0, 1),
    "4bit_ahead": (0.8, 4, 1, 1),
    "4bit_mantissa": (0.8, 4, 2, 1),
    "4bit_mantissa_x0.5": (0.8, 4, 2, 0.5),
    "4bit_mantissa_x2": (0.8, 4, 2, 2),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script under TRITON_INTERPRET=1")
    args = p.parse_args()
    import rsparse
    from rsparse.nn import forward_shared_input
    from rsparse.ops import sparse_linear_reference
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device=args.device).manual_seed(0)
    defaults = (K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE)
    dtype = torch.bfloat16
    with open(Path(args.out) / "lr_ahead.jsonl", "w") as out:
        for name in args.cases:
            n, ms = CASES[name]
            with_o = name == "qkv fused + o"
            layer_bytes = n * sum(ms) * 2 + (4096 * 4096 * 2 if with_o else 0)
            copies = max(2, math.ceil(3 * L2_BYTES / layer_bytes))
            x = torch.randn(1, n, device=args.device, dtype=dtype, generator=gen)
            shapes = [(n, m) for m in ms] + ([(4096, 4096)] if with_o else [])
            built = {}  # (rho, bits) -> copies of [modules], [dense weights]
            for rho, bits, _, _ in {VARIANTS[v] for v in args.variants}:
                if (rho, bits) not in built:
                    built[(rho, bits)] = [list(zip(*[build_layer(a, b, args.sparsity, rho, x, dtype, args.device, gen, bits)
                                                     for a, b in shapes])) for _ in range(copies)]

            def sparse_call(mods, ahead, scale):
                def call():
                    K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE = ahead, scale
                    if with_o:
                        return forward_shared_input(x, list(mods[:3])), mods[3](x)
                    return forward_shared_input(x, list(mods)) if len(mods) > 1 else mods[0](x)
                return call

            calls, errs = {}, {}
            for v in args.variants:
                rho, bits, ahead, scale = VARIANTS[v]
                layers = built[(rho, bits)]
                calls[v] = [sparse_call(mods, ahead, scale) for mods, _ in layers]
                K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE = ahead, scale
                e = 0.0
                for mod in layers[0][0]:
                    ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out,
                                                  mod.bias, None, mod.factor_ranges()).double()
                    e = max(e, ((mod(x).double() - ref).norm() / ref.norm()).item())
                errs[v] = e
            dense_layers = built[(1.0, 16)] if (1.0, 16) in built else next(iter(built.values()))
            calls["dense"] = [lambda ws=ws: [F.linear(x, w) for w in ws] for _, ws in dense_layers]
            times = alternating_us(calls, copies, args.reps, args.rounds)
            K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE = defaults
            dense = statistics.median(times["dense"])
            base = statistics.median(times["rho1"]) if "rho1" in times else None
            for v in args.variants:
                us = statistics.median(times[v])
                rho, bits, ahead, scale = VARIANTS[v]
                row = {"case": name, "sparsity": args.sparsity, "variant": v, "rho": rho, "factor_bits": bits,
                       "lr_ahead": ahead, "packed_lowrank_rows_scale": scale, "us": round(us, 2),
                       "us_rounds": [round(t, 2) for t in times[v]], "us_dense": round(dense, 2),
                       "speedup": round(dense / us, 3),
                       "over_rho1": None if base is None else round(us / base - 1, 4),
                       "rel_err": errs[v], "copies": copies}
                print(json.dumps({k: row[k] for k in ("case", "variant", "us", "us_rounds", "us_dense", "speedup",
                                                      "over_rho1", "rel_err")}), flush=True)
                out.write(json.dumps(row) + "\n")
            del built, calls
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
