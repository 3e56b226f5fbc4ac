"""How long the low-rank items should be, at 50 %, rho 0.8, against cuBLAS dense in the same run.  GPU only.

* One token (``--batch 1``): low-rank items of ``--scales`` times the rows of the "density" rule, with packed 4-bit
  factors (`rsparse.kernels.sparse_linear.PACKED_LOWRANK_ROWS_SCALE`) and with bf16 ones
  (`PLAIN_LOWRANK_ROWS_SCALE`), beside rho 1; every variant on the same layers, each in its own CUDA graph, timed in
  turn round after round (`kernel_speed.time_switch_variants`).  Run 52 (H100) timed packed 1, 2, 4 and 8 (one
  variant per run): 1 was fastest on all four cases, about one memory round trip per extra step, so the default
  scales are now 0.25, 0.5 and 1.
* 2-16 tokens (``--batch 4``), bf16 and packed factors: low-rank items of a weight item's rows divided by 1, 2, 4
  and 8 (`DOT_LOWRANK_ROWS_DIV`).  They start only when every z producer (the weight items) is done, so they run
  as a tail; shorter items spread that tail over more multiprocessors.

    python benchmarks/ablations/packed_lr_rows.py --out $OUT
    python benchmarks/ablations/packed_lr_rows.py --batch 4 --out $OUT
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, run_case, time_switch_variants  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--scales", type=float, nargs="*", default=None,
                   help="one token: 0.25 0.5 1 unless given; batches: 1 2 4 8 (divisors)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    if args.batch == 1:
        one_token(args, K, gen)
        return
    knob = "DOT_LOWRANK_ROWS_DIV"
    default = getattr(K, knob)
    suffix = f"_b{args.batch}"
    args.scales = [int(v) for v in args.scales or [1, 2, 4, 8]]
    with open(Path(args.out) / f"packed_lr_rows{suffix}.jsonl", "w") as out:
        for name in args.cases:
            n, ms = CASES[name]
            plan = ((16, args.scales), (4, args.scales))
            for bits, scales in plan:
                for scale in scales:
                    setattr(K, knob, scale)
                    row = run_case(name, n, ms, 0.5, 0.8, args.batch, torch.bfloat16, "cuda", args.reps, gen,
                                   rounds=2, factor_bits=bits)
                    row[knob.lower()] = scale
                    print(json.dumps({k: row[k] for k in ("case", "batch", "factor_bits", knob.lower(), "us_module",
                                                          "us_dense", "speedup_module_by_round",
                                                          "max_rel_err_vs_reference")}), flush=True)
                    out.write(json.dumps(row) + "\n")
    setattr(K, knob, default)


def one_token(args, K, gen):
    """Batch 1: every scale of both factor kinds, alternated round after round on the same layers."""
    knobs = ("PACKED_LOWRANK_ROWS_SCALE", "PLAIN_LOWRANK_ROWS_SCALE")
    shipped = {k: getattr(K, k) for k in knobs}

    def setting(knob=None, scale=None):
        def apply():
            for k in knobs:
                setattr(K, k, scale if k == knob else shipped[k])
        return apply

    variants = {"rho1": (1.0, 16, setting())}
    for scale in args.scales or [0.25, 0.5, 1.0]:
        variants[f"bf16_x{scale:g}"] = (0.8, 16, setting("PLAIN_LOWRANK_ROWS_SCALE", scale))
        variants[f"4bit_x{scale:g}"] = (0.8, 4, setting("PACKED_LOWRANK_ROWS_SCALE", scale))
    with open(Path(args.out) / "packed_lr_rows.jsonl", "w") as out:
        for name in args.cases:
            res, copies = time_switch_variants(name, 1, 0.5, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                               variants)
            setting()()
            dense, base = res["dense"]["us"], res["rho1"]["us"]
            for v, (rho, bits, _) in variants.items():
                row = {"case": name, "batch": 1, "sparsity": 0.5, "variant": v, "rho": rho, "factor_bits": bits,
                       **res[v], "us_dense": dense, "speedup": round(dense / res[v]["us"], 3),
                       "over_rho1": round(res[v]["us"] / base - 1, 4), "copies": copies}
                print(json.dumps({k: row[k] for k in ("case", "variant", "us", "us_rounds", "us_dense", "speedup",
                                                      "over_rho1", "rel_err")}), flush=True)
                out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
