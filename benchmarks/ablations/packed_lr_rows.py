"""How long the low-rank items of 2-16 tokens should be, at 50 %, rho 0.8, against cuBLAS dense.  GPU only.

Low-rank items of a weight item's rows divided by 1, 2, 4 and 8 (`DOT_LOWRANK_ROWS_DIV`), bf16 and packed 4-bit
factors.  They start only when every z producer (the weight items) is done, so they run as a tail; shorter items
spread that tail over more multiprocessors.

One token's low-rank items were timed here too, as multiples of the "density" rule's rows: packed 2, 4 and 8 in
kernel run 52 and 0.25 / 0.5 / 1 for both factor kinds in kernel run 61 (H100); 1 stayed, and the switches and this
script's one-token mode were removed after run 61 (the last commit with them is 2934b5b).

    python benchmarks/ablations/packed_lr_rows.py --out $OUT
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
    p.add_argument("--batch", type=int, default=4, help="tokens per call, 2-16")
    p.add_argument("--scales", type=int, nargs="*", default=[1, 2, 4, 8], help="divisors of a weight item's rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    if not 2 <= args.batch <= 16:
        raise ValueError(f"--batch: expected 2-16 tokens (the tensor-core launch), got {args.batch}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    knob = "DOT_LOWRANK_ROWS_DIV"
    default = getattr(K, knob)
    suffix = f"_b{args.batch}"
    with open(Path(args.out) / f"packed_lr_rows{suffix}.jsonl", "w") as out:
        for name in args.cases:
            n, ms = CASES[name]
            plan = ((16, args.scales), (4, args.scales))
            for bits, scales in plan:
                for scale in scales:
                    setattr(K, knob, scale)
                    row = run_case(name, n, ms, 0.5, 0.8, args.batch, torch.bfloat16, "cuda", args.reps, gen,
                                   rounds=args.rounds, factor_bits=bits)
                    row[knob.lower()] = scale
                    print(json.dumps({k: row[k] for k in ("case", "batch", "factor_bits", knob.lower(), "us_module",
                                                          "us_dense", "speedup_module_by_round",
                                                          "max_rel_err_vs_reference")}), flush=True)
                    out.write(json.dumps(row) + "\n")
    setattr(K, knob, default)


if __name__ == "__main__":
    main()
