"""How long the low-rank items should be, at 50 %, rho 0.8, against cuBLAS dense in the same run.  GPU only.

* One token (``--batch 1``), packed 4-bit factors: low-rank items of 1, 2, 4 and 8 times the rows of the
  "density" rule (`rsparse.kernels.sparse_linear.PACKED_LOWRANK_ROWS_SCALE`), beside the bf16-factor launch.
  Run 52 (H100): 1 was fastest on all four cases.
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
from kernel_speed import CASES, run_case  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--scales", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    knob = "PACKED_LOWRANK_ROWS_SCALE" if args.batch == 1 else "DOT_LOWRANK_ROWS_DIV"
    default = getattr(K, knob)
    suffix = "" if args.batch == 1 else f"_b{args.batch}"
    with open(Path(args.out) / f"packed_lr_rows{suffix}.jsonl", "w") as out:
        for name in args.cases:
            n, ms = CASES[name]
            plan = ((16, [1]), (4, args.scales)) if args.batch == 1 else ((16, args.scales), (4, args.scales))
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


if __name__ == "__main__":
    main()
