"""A/B of the one-token launch settings for a tall projection with a low-rank path (issue 5, acceptance 3).

down_proj (14336->4096) at 50 % with ``rho=0.8`` costs 16-18 % over ``rho=1`` in kernel runs 12-17, against
the 15 % acceptance 3 allows. Its launch puts 672 z items (224 chunks of `Z_STEPS` x 16 channels, 3 rank
blocks of 128 for rank 318) ahead of the 512 weight items, more than the 528 slots of one wave, so the weight
rows start late. This times settings that change the z items' count and length, or the slots, against the
shipped setting and the ``rho=1`` row, interleaved over rounds in one process (`benchmarks/kernel_speed.py`'s
timing: CUDA-graph replay, weights rotated beyond L2, cuBLAS in the same call; every row checked against the
PyTorch reference):

    python benchmarks/tall_lowrank_ab.py --rounds 3 --out results/tall_lowrank_ab.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_speed as bench  # noqa: E402  (this folder's kernel benchmark: the same cases and timing)

CASE = "down 14336->4096"
# (label, rho, changes to the shipped one-token config; None: no override at all)
VARIANTS = [
    ("rho 1, shipped", 1.0, None),
    ("shipped (4 steps, 128 ranks, 4/SM)", 0.8, None),
    ("3 steps", 0.8, {"z_steps": 3}),
    ("5 steps", 0.8, {"z_steps": 5}),
    ("6 steps", 0.8, {"z_steps": 6}),
    ("7 steps", 0.8, {"z_steps": 7}),
    ("5 per SM", 0.8, {"programs_per_sm": 5}),
    ("8 steps of 16 x 64 ranks", 0.8, {"z_steps": 8, "block_r": 64}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(bench.SEED)
    n, ms = bench.CASES[CASE]
    shipped = K.choose_config(n, sum(ms), False, 2, 1.0 - args.sparsity, True)
    rows = []
    try:
        for rnd in range(args.rounds):
            for label, rho, changes in VARIANTS:
                K.set_config(None if changes is None else dataclasses.replace(shipped, **changes))
                r = bench.run_case(CASE, n, ms, args.sparsity, rho, 1, torch.bfloat16, "cuda", args.reps, gen)
                r.update(round=rnd, variant=label)
                rows.append(r)
                print(json.dumps({k: r[k] for k in ("variant", "rho", "round", "us_module", "us_dense",
                                                       "max_rel_err_vs_reference")}), flush=True)
    finally:
        K.set_config(None)
    base = statistics.median(r["us_module"] for r in rows if r["variant"] == VARIANTS[0][0])
    summary = []
    for label, rho, changes in VARIANTS:
        mine = [r for r in rows if r["variant"] == label]
        med = statistics.median(r["us_module"] for r in mine)
        summary.append({"variant": label, "rho": rho, "changes": changes, "us_module": [r["us_module"] for r in mine],
                        "us_dense": [r["us_dense"] for r in mine], "median_us": med,
                        "cost_over_rho1": round(med / base - 1.0, 4),
                        "max_rel_err": max(r["max_rel_err_vs_reference"] for r in mine)})
        print(json.dumps(summary[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                    "shipped": dataclasses.asdict(shipped), "rows": rows, "summary": summary},
                                   indent=1))


if __name__ == "__main__":
    main()
