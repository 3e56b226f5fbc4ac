"""One token with packed 4-bit factors: the levels' floats formed from their bits (`PACKED_LEVELS` "bits" and
"biased") against the integer-to-float conversion ("convert"), with rho 1, bf16 factors and cuBLAS dense in the same
run.  GPU only.

Each level q (0..15) of a z item or a low-rank item becomes a float before its FMA.  `q.to(float32)` compiles to
I2F, a quarter-rate unit on sm_90, once per factor element: 1 274 x 14336 of them in gate/up's low-rank rows at
rho 0.8.  The bits 0x4B000000 | q are 2^23 + q in fp32, so an OR and a full-rate add give the same value ("bits");
the bits 0x43000000 | q << 16 are 128 + q, used as they are with the 128 taken out once per row and step ("biased":
one FMA per element instead of two).

Variants, every one on the same layers (batch 1, bf16 activations), each in its own CUDA graph, timed in turn round
after round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path);
* ``bf16``: rho 0.8, bf16 factors;
* ``4bit_convert`` / ``4bit_bits`` / ``4bit_biased``: rho 0.8, packed 4-bit factors (the default), each
  `PACKED_LEVELS`;
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/float_levels.jsonl.

    python benchmarks/ablations/float_levels.py --out $OUT
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, time_switch_variants  # noqa: E402

# name: (rho, factor bits, PACKED_LEVELS)
VARIANTS = {"rho1": (1.0, 16, "convert"), "bf16": (0.8, 16, "convert"), "4bit_convert": (0.8, 4, "convert"),
            "4bit_bits": (0.8, 4, "bits"), "4bit_biased": (0.8, 4, "biased")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sparsities", nargs="*", type=float, default=[0.5])
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shipped = K.PACKED_LEVELS

    def setting(levels):
        def apply():
            K.PACKED_LEVELS = levels
        return apply

    with open(Path(args.out) / "float_levels.jsonl", "w") as out:
        for s in args.sparsities:
            for name in args.cases:
                variants = {v: (rho, bits, setting(levels)) for v, (rho, bits, levels) in VARIANTS.items()}
                res, copies = time_switch_variants(name, 1, s, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                                   variants)
                K.PACKED_LEVELS = shipped
                dense, base = res["dense"]["us"], res["rho1"]["us"]
                for v, (rho, bits, levels) in VARIANTS.items():
                    row = {"case": name, "sparsity": s, "variant": v, "rho": rho, "factor_bits": bits,
                           "PACKED_LEVELS": levels, **res[v], "us_dense": dense,
                           "speedup": round(dense / res[v]["us"], 3), "over_rho1": round(res[v]["us"] / base - 1, 4),
                           "copies": copies}
                    print(json.dumps({k: row[k] for k in ("case", "sparsity", "variant", "us", "us_rounds", "us_dense",
                                                          "speedup", "over_rho1", "rel_err")}), flush=True)
                    out.write(json.dumps(row) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
