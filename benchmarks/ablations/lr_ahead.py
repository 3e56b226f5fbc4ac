"""One token's low-rank items with and without their next step loaded ahead (`LR_AHEAD`), against rho 1 and cuBLAS
dense in the same run.  GPU only.

The low-rank items of the one-token split-K launch wait for z, so they run last, as a tail after the weight items,
and each of their steps was a memory round trip: packed items 1, 2, 4 and 8 times as long took gate/up 36.6, 43.9,
52.3 and 77.5 us (H100, thirty-third session).  Here every variant runs on the same layers (50 %, batch 1, bf16
activations), each in its own CUDA graph, timed in turn round after round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path; what acceptance 3 compares with);
* ``bf16`` / ``bf16_ahead``: rho 0.8 with bf16 factors, `LR_AHEAD` off / on;
* ``4bit`` / ``4bit_ahead`` / ``4bit_mantissa`` / ``4bit_prmt``: rho 0.8 with packed 4-bit factors (the default),
  `LR_AHEAD` 0 / 1 / 2 / 3 (2: the levels read as mantissa bits, the offsets summed once per step; 3: those bits
  made by byte permutes in inline PTX);
* ``4bit_mantissa_x0.5`` / ``4bit_mantissa_x2``: 2, with packed items half / twice as long
  (`PACKED_LOWRANK_ROWS_SCALE`);
* ``4bit_r256`` / ``4bit_mantissa_r256``: `LR_AHEAD` 0 / 2 with z items of 256 ranks over steps of 8 channels and
  twice the steps (the same channels per item, half the z items: 160 against 320 on gate/up). The packed z items
  come first in the grid and hold slots the weight items wait for. Offline the launch then takes 96 / 117 registers;
  256 ranks over 16 channels would take 137 / 158, too many for 4 programs per SM;
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/lr_ahead.jsonl.

    python benchmarks/ablations/lr_ahead.py --out $OUT
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, time_switch_variants  # noqa: E402

# name: (rho, factor bits, LR_AHEAD, PACKED_LOWRANK_ROWS_SCALE, z items of 256 ranks over 8-channel steps)
VARIANTS = {
    "rho1": (1.0, 16, 0, 1, False),
    "bf16": (0.8, 16, 0, 1, False),
    "bf16_ahead": (0.8, 16, 1, 1, False),
    "4bit": (0.8, 4, 0, 1, False),
    "4bit_ahead": (0.8, 4, 1, 1, False),
    "4bit_mantissa": (0.8, 4, 2, 1, False),
    "4bit_prmt": (0.8, 4, 3, 1, False),
    "4bit_mantissa_x0.5": (0.8, 4, 2, 0.5, False),
    "4bit_mantissa_x2": (0.8, 4, 2, 2, False),
    "4bit_r256": (0.8, 4, 0, 1, True),
    "4bit_mantissa_r256": (0.8, 4, 2, 1, True),
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
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shipped = (K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE)

    def switches(ahead, scale, wide_r, n, m_total, bits):
        # The tiles go straight into the table `set_config` fills: set_config also drops the eager graphs, and
        # this runs before every call, inside the captures.
        def apply():
            K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE = ahead, scale
            K._OVERRIDE.pop("gemv1", None)
            if wide_r:
                cfg = K.choose_config(n, m_total, False, 2, (1 - args.sparsity) * 0.8, True, bits == 4)
                K._OVERRIDE["gemv1"] = dataclasses.replace(cfg, block_r=256, block_kz=8,
                                                           z_steps=2 * (cfg.z_steps or K.Z_STEPS))
        return apply

    with open(Path(args.out) / "lr_ahead.jsonl", "w") as out:
        for name in args.cases:
            n, ms = CASES[name]
            variants = {v: (VARIANTS[v][0], VARIANTS[v][1], switches(*VARIANTS[v][2:], n, sum(ms), VARIANTS[v][1]))
                        for v in args.variants}
            res, copies = time_switch_variants(name, 1, args.sparsity, torch.bfloat16, "cuda", gen, args.reps,
                                               args.rounds, variants)
            K.LR_AHEAD, K.PACKED_LOWRANK_ROWS_SCALE = shipped
            K._OVERRIDE.pop("gemv1", None)
            dense = res["dense"]["us"]
            base = res["rho1"]["us"] if "rho1" in res else None
            for v in args.variants:
                rho, bits, ahead, scale, wide_r = VARIANTS[v]
                row = {"case": name, "sparsity": args.sparsity, "variant": v, "rho": rho, "factor_bits": bits,
                       "lr_ahead": ahead, "packed_lowrank_rows_scale": scale, "z_block_r_256": wide_r, **res[v],
                       "us_dense": dense,
                       "speedup": round(dense / res[v]["us"], 3),
                       "over_rho1": None if base is None else round(res[v]["us"] / base - 1, 4), "copies": copies}
                print(json.dumps({k: row[k] for k in ("case", "variant", "us", "us_rounds", "us_dense", "speedup",
                                                      "over_rho1", "rel_err")}), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
