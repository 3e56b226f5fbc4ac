"""Batches (2-16 tokens, the tensor-core code) with z in items of its own (`DOT_Z_ITEMS`), against the shipped launch,
rho 1 and cuBLAS dense in the same run.  GPU only.

Shipped, a batch's z producers are the weight items of the first ceil(r / block_r) tiles, before their own rows; with
packed 4-bit factors (four times the rank at equal bytes) that is most weight items (gate/up at rho 0.8: 20 r-blocks of
64 over 28 tiles), and the low-rank items wait for all of them.  With z items of their own (first in the grid, as one
token has them) the weight items start streaming at once.  Compiled for sm_90 (tools/aot_check_splitk.py) the packed
launch then fits 168 registers over 3 stages (223 with z in the weight items, hence PACKED_DOT_CONFIG's 1 stage).

Variants, every one on the same layers (50 %, bf16 activations), each in its own CUDA graph, timed in turn round after
round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path);
* ``shipped``: rho 0.8, as `choose_config` sets it;
* ``z_items``: `DOT_Z_ITEMS` on, the shipped tiles (z items of `Z_STEPS` = 4 steps of block_kz = 32 channels: with
  packed factors 640 z items on gate/up, 2 240 on down, ahead of 396 weight items);
* ``z_items_steps8`` / ``16`` / ``32``: on, z items of 8, 16, 32 steps (fewer, longer);
* ``z_items_steps16_3stages``: on, 16 steps, 3 pipeline stages (packed factors only: bf16 factors have 3 already);
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/dot_z_items.jsonl.

    python benchmarks/ablations/dot_z_items.py --out $OUT
"""
import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, L2_BYTES, alternating_us, build_layer  # noqa: E402

# name: (rho, DOT_Z_ITEMS, Config changes over the shipped one, or None for the shipped Config)
VARIANTS = {
    "rho1": (1.0, False, None),
    "shipped": (0.8, False, None),
    "z_items": (0.8, True, None),
    "z_items_steps8": (0.8, True, {"z_steps": 8}),
    "z_items_steps16": (0.8, True, {"z_steps": 16}),
    "z_items_steps32": (0.8, True, {"z_steps": 32}),
    "z_items_steps16_3stages": (0.8, True, {"z_steps": 16, "num_stages": 3}),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--factor-bits", type=int, nargs="*", default=[4, 16])
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script under TRITON_INTERPRET=1")
    args = p.parse_args()
    import rsparse
    from rsparse.nn import forward_shared_input
    from rsparse.ops import sparse_linear_reference
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device=args.device).manual_seed(0)
    dtype = torch.bfloat16
    shipped_z_items = K.DOT_Z_ITEMS

    def settings(z_items, changes, bits, n, m_total):
        """Set the module's switches for one variant. The tiles go straight into the override table that
        `set_config` fills: set_config would also drop the eager graphs at every call, inside a capture."""
        K.DOT_Z_ITEMS = z_items
        K._OVERRIDE.pop("dot", None)
        if changes:
            cfg = K.choose_config(n, m_total, True, 2, args.sparsity, True, bits == 4)
            K._OVERRIDE["dot"] = dataclasses.replace(cfg, **changes)

    with open(Path(args.out) / "dot_z_items.jsonl", "w") as out:
        for bits in args.factor_bits:
            for name in args.cases:
                n, ms = CASES[name]
                with_o = name == "qkv fused + o"
                layer_bytes = n * sum(ms) * 2 + (4096 * 4096 * 2 if with_o else 0)
                copies = max(2, math.ceil(3 * L2_BYTES / layer_bytes))
                x = torch.randn(args.batch, n, device=args.device, dtype=dtype, generator=gen)
                shapes = [(n, m) for m in ms] + ([(4096, 4096)] if with_o else [])
                built = {rho: [list(zip(*[build_layer(a, b, args.sparsity, rho, x, dtype, args.device, gen, bits)
                                          for a, b in shapes])) for _ in range(copies)]
                         for rho in sorted({v[0] for v in VARIANTS.values()})}
                variants = [v for v in VARIANTS if not (v.endswith("3stages") and bits != 4)]

                def sparse_call(mods, z_items, changes):
                    def call():
                        settings(z_items, changes, bits, n, sum(ms))
                        if with_o:
                            return forward_shared_input(x, list(mods[:3])), mods[3](x)
                        return forward_shared_input(x, list(mods)) if len(mods) > 1 else mods[0](x)
                    return call

                calls, errs = {}, {}
                for v in variants:
                    rho, z_items, changes = VARIANTS[v]
                    layers = built[rho]
                    calls[v] = [sparse_call(mods, z_items, changes) for mods, _ in layers]
                    settings(z_items, changes, bits, n, sum(ms))
                    e = 0.0
                    for mod in layers[0][0]:
                        ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out,
                                                      mod.bias, None, mod.factor_ranges()).double()
                        e = max(e, ((mod(x).double() - ref).norm() / ref.norm()).item())
                    errs[v] = e
                calls["dense"] = [lambda ws=ws: [F.linear(x, w) for w in ws] for _, ws in built[1.0]]
                times = alternating_us(calls, copies, args.reps, args.rounds)
                settings(shipped_z_items, None, bits, n, sum(ms))
                dense = statistics.median(times["dense"])
                for v in variants:
                    us = statistics.median(times[v])
                    row = {"case": name, "batch": args.batch, "sparsity": args.sparsity, "factor_bits": bits,
                           "variant": v, "rho": VARIANTS[v][0], "us": round(us, 2),
                           "us_rounds": [round(t, 2) for t in times[v]], "us_dense": round(dense, 2),
                           "speedup": round(dense / us, 3), "rel_err": errs[v], "copies": copies}
                    print(json.dumps({k: row[k] for k in ("case", "factor_bits", "variant", "us", "us_rounds",
                                                          "us_dense", "speedup", "rel_err")}), flush=True)
                    out.write(json.dumps(row) + "\n")
                del built, calls
                if args.device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
