"""One token, packed 4-bit factors at 50 %, rho 0.8: low-rank items of 1, 2, 4 and 8 times the rows of the
"density" rule (`rsparse.kernels.sparse_linear.PACKED_LOWRANK_ROWS_SCALE`), against cuBLAS dense and the
bf16-factor launch in the same run.  GPU only.

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
    p.add_argument("--scales", type=int, nargs="*", default=[1, 2, 4, 8])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with open(Path(args.out) / "packed_lr_rows.jsonl", "w") as out:
        for name in ("gate/up 4096->14336", "down 14336->4096", "gate+up fused 4096->2x14336", "qkv fused + o"):
            n, ms = CASES[name]
            for bits, scales in ((16, [1]), (4, args.scales)):
                for scale in scales:
                    K.PACKED_LOWRANK_ROWS_SCALE = scale
                    row = run_case(name, n, ms, 0.5, 0.8, 1, torch.bfloat16, "cuda", args.reps, gen, rounds=2,
                                   factor_bits=bits)
                    row["packed_lowrank_rows_scale"] = scale
                    print(json.dumps({k: row[k] for k in ("case", "factor_bits", "packed_lowrank_rows_scale",
                                                          "us_module", "us_dense", "speedup_module_by_round",
                                                          "max_rel_err_vs_reference")}), flush=True)
                    out.write(json.dumps(row) + "\n")
    K.PACKED_LOWRANK_ROWS_SCALE = 1


if __name__ == "__main__":
    main()
