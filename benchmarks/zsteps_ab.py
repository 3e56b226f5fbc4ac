"""A/B of the z-item length for a wide single projection with a low-rank path (issue 5, acceptance 3).

`choose_config` gives one-token launches with a rank z items of `Z_STEPS` (4) steps of 16
channels; `WIDE_Z_STEPS` (8) replaces that for a wide single projection (4096->14336) above the
compact path's active share. This times `benchmarks/kernel_speed.py`'s cases with the rule and without
it, interleaved over rounds in one process (CUDA-graph replay, weights rotated beyond L2, cuBLAS
in the same call), with the rho-1 rows the acceptance compares against:

    python benchmarks/zsteps_ab.py --rounds 3 --out results/zsteps_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_speed as bench  # noqa: E402  (this folder's kernel benchmark: the same cases and timing)

# (case, sparsity, rho, WIDE_Z_STEPS); None: the shipped module default (Z_STEPS).
VARIANTS = [
    ("gate/up 4096->14336", 0.5, 1.0, None),
    ("gate/up 4096->14336", 0.5, 0.8, 4),
    ("gate/up 4096->14336", 0.5, 0.8, 8),
    ("gate/up 4096->14336", 0.4, 1.0, None),
    ("gate/up 4096->14336", 0.4, 0.8, 4),
    ("gate/up 4096->14336", 0.4, 0.8, 8),
    ("down 14336->4096", 0.5, 1.0, None),
    ("down 14336->4096", 0.5, 0.8, None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(bench.SEED)
    shipped = K.WIDE_Z_STEPS
    rows = []
    for rnd in range(args.rounds):
        for case, s, rho, steps in VARIANTS:
            K.WIDE_Z_STEPS = shipped if steps is None else steps
            n, ms = bench.CASES[case]
            r = bench.run_case(case, n, ms, s, rho, 1, torch.bfloat16, "cuda", args.reps, gen)
            r.update(round=rnd, wide_z_steps=steps)
            rows.append(r)
            print(json.dumps({k: r[k] for k in ("case", "sparsity", "rho", "wide_z_steps", "round", "us_module",
                                                   "us_dense", "max_rel_err_vs_reference")}), flush=True)
    K.WIDE_Z_STEPS = shipped
    summary = []
    for case, s, rho, steps in VARIANTS:
        mine = [r for r in rows if (r["case"], r["sparsity"], r["rho"], r["wide_z_steps"]) == (case, s, rho, steps)]
        summary.append({"case": case, "sparsity": s, "rho": rho, "wide_z_steps": steps,
                        "us_module": [r["us_module"] for r in mine], "us_dense": [r["us_dense"] for r in mine],
                        "median_us": statistics.median(r["us_module"] for r in mine),
                        "max_rel_err": max(r["max_rel_err_vs_reference"] for r in mine)})
        print(json.dumps(summary[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                    "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
