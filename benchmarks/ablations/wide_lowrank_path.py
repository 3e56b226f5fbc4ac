"""One token, wide layers with a low-rank path: the compact path against the split-K launch with z items
(`rsparse.kernels.sparse_linear.COMPACT_WITH_RANK`), beside rho 1 and cuBLAS dense in the same rounds.  GPU only.

`choose_config` sends the fused gate+up pair (up to `WIDE_COMPACT_MAX_ACTIVE`) and a single gate/up (up to
`COMPACT_MAX_ACTIVE`) to the two-launch compact path whether or not they have a rank; tall layers with a rank take
the split-K launch since kernel run 11, where the pair's compact path still won (H200: 43.74 against 47.90 us at
50 %, rho 0.8).  The split-K launch has changed much since, and in kernel run 62 (H100) the compact pair took 16.4 %
over its rho-1 time at 50 % against 6.3 % for gate/up alone on the split-K launch.

Variants, every one on the same layers (batch 1, bf16 activations and factors), each in its own CUDA graph, timed in
turn round after round (`kernel_speed.time_switch_variants`): ``rho1`` (shipped), ``compact`` (rho 0.8,
`COMPACT_WITH_RANK = True`, shipped) and ``splitk`` (rho 0.8, False).  Cases: the pair at 50 and 70 %, gate/up alone
at 70 % (at 50 % its 40 % active share is above `COMPACT_MAX_ACTIVE`, so both settings launch the same).

Adoption rule, written before the run: `COMPACT_WITH_RANK = False` if ``splitk`` is faster than ``compact`` on all
three rows; otherwise it stays True.  Each variant's projections are checked against the PyTorch reference once,
each alone (so the pair's check does not run its fused launch; the tests cover both paths).  Prints JSON lines;
writes ``--out``/wide_lowrank_path.jsonl.

    python benchmarks/ablations/wide_lowrank_path.py --out $OUT
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import time_switch_variants  # noqa: E402

# name: (rho, COMPACT_WITH_RANK)
VARIANTS = {"rho1": (1.0, True), "compact": (0.8, True), "splitk": (0.8, False)}
ROWS = [("gate+up fused 4096->2x14336", 0.5), ("gate+up fused 4096->2x14336", 0.7), ("gate/up 4096->14336", 0.7)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shipped = K.COMPACT_WITH_RANK

    def setting(on):
        def apply():
            K.COMPACT_WITH_RANK = on
        return apply

    with open(Path(args.out) / "wide_lowrank_path.jsonl", "w") as out:
        for name, s in ROWS:
            variants = {v: (rho, 16, setting(on)) for v, (rho, on) in VARIANTS.items()}
            res, copies = time_switch_variants(name, 1, s, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                               variants)
            K.COMPACT_WITH_RANK = shipped
            dense, base = res["dense"]["us"], res["rho1"]["us"]
            for v, (rho, on) in VARIANTS.items():
                row = {"case": name, "sparsity": s, "variant": v, "rho": rho, "compact_with_rank": on, **res[v],
                       "us_dense": dense, "speedup": round(dense / res[v]["us"], 3),
                       "over_rho1": round(res[v]["us"] / base - 1, 4), "copies": copies}
                print(json.dumps({k: row[k] for k in ("case", "sparsity", "variant", "us", "us_rounds", "us_dense",
                                                      "speedup", "over_rho1", "rel_err")}), flush=True)
                out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
