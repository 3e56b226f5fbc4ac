"""Batches (2-16 tokens, the tensor-core code) with z in items of its own (`Config.z_items`), against the shipped launch,
rho 1 and cuBLAS dense in the same run.  GPU only.

Shipped, a batch's z producers are the weight items of the first ceil(r / block_r) tiles, before their own rows; with
packed 4-bit factors (four times the rank at equal bytes) that is most weight items (gate/up at rho 0.8: 20 r-blocks of
64 over 28 tiles), and the low-rank items wait for all of them.  With z items of their own (first in the grid, as one
token has them) the weight items start streaming at once.  Compiled for sm_90 (tools/aot_check_splitk.py) the packed
launch then fits 168 registers over 3 stages (223 with z in the weight items, hence PACKED_DOT_CONFIG's 1 stage).

Variants, every one on the same layers (50 %, bf16 activations), each in its own CUDA graph, timed in turn round after
round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path);
* ``shipped``: rho 0.8, as `choose_config` sets it (since kernel run 59 packed factors on the MLP's shapes take
  ``z_items_steps16_3stages``);
* ``z_in_weight_items``: rho 0.8, z in the weight items, on the base tiles (`PACKED_DOT_CONFIG` for packed factors,
  `choose_config`'s for bf16 ones);
* ``z_items``: z items of their own, the base tiles (z items of `Z_STEPS` = 4 steps of block_kz = 32 channels: with
  packed factors 640 z items on gate/up, 2 240 on down, ahead of 396 weight items);
* ``z_items_steps8`` / ``16`` / ``32``: the same, z items of 8, 16, 32 steps (fewer, longer);
* ``z_items_steps16_3stages``: 16 steps, 3 pipeline stages (packed factors only: bf16 factors have 3 already);
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/dot_z_items.jsonl.

    python benchmarks/ablations/dot_z_items.py --out $OUT
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, time_switch_variants, variant_timing, write_row  # noqa: E402

# name: (rho, Config changes over the base tiles, or None for choose_config's own)
VARIANTS = {
    "rho1": (1.0, None),
    "shipped": (0.8, None),
    "z_in_weight_items": (0.8, {"z_items": False}),
    "z_items": (0.8, {"z_items": True}),
    "z_items_steps8": (0.8, {"z_items": True, "z_steps": 8}),
    "z_items_steps16": (0.8, {"z_items": True, "z_steps": 16}),
    "z_items_steps32": (0.8, {"z_items": True, "z_steps": 32}),
    "z_items_steps16_3stages": (0.8, {"z_items": True, "z_steps": 16, "num_stages": 3}),
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
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)

    def switches(changes, bits, n, m_total):
        # The tiles go straight into the table `set_config` fills: set_config also drops the eager graphs, and
        # this runs before every call, inside the captures.
        def apply():
            K._OVERRIDE.pop("dot", None)
            if changes:
                base = K.PACKED_DOT_CONFIG if bits == 4 else K.choose_config(n, m_total, True, 2, args.sparsity, True)
                K._OVERRIDE["dot"] = dataclasses.replace(base, **changes)
        return apply

    with open(Path(args.out) / "dot_z_items.jsonl", "w") as out:
        for bits in args.factor_bits:
            for name in args.cases:
                n, ms = CASES[name]
                variants = {v: (rho, bits, switches(changes, bits, n, sum(ms)))
                            for v, (rho, changes) in VARIANTS.items()
                            if not (v.endswith("3stages") and bits != 4)}
                res, copies = time_switch_variants(name, args.batch, args.sparsity, torch.bfloat16, "cuda", gen,
                                                   args.reps, args.rounds, variants)
                switches(None, bits, n, sum(ms))()
                for v in variants:
                    write_row(out, {"case": name, "batch": args.batch, "sparsity": args.sparsity, "factor_bits": bits,
                                    "variant": v, "rho": VARIANTS[v][0], **variant_timing(res, v), "copies": copies},
                              shown=("case", "factor_bits", "variant", "us", "us_rounds", "us_dense", "speedup",
                                     "rel_err"))

if __name__ == "__main__":
    main()
