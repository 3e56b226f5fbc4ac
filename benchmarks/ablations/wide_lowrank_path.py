"""One token, wide layers with a low-rank path: the compact path against the split-K launch with z items
(`rsparse.kernels.sparse_linear.RANKED_COMPACT_MAX_ACTIVE`), beside rho 1 and cuBLAS dense in the same rounds.  GPU only.

`choose_config` sends the fused gate+up pair (up to `WIDE_COMPACT_MAX_ACTIVE`) and a single gate/up (up to
`SINGLE_COMPACT_MAX_ACTIVE`, 0.35 until kernel run 67) to the two-launch compact path; with a rank, only up to the
shape's entry of `RANKED_COMPACT_MAX_ACTIVE` ("pair" / "single"; shipped: the same limits), the split-K launch with z
items above it.

Kernel run 63 (H100, the first run of this script, rows at 50 / 70 / 70 %): split-K won the pair at 50 % (50.06
against 54.90 us) and gate/up at 70 % (20.90 against 23.70), the compact path the pair at 70 % (36.80 against 43.01),
so the switch of then (split-K for every wide layer with a rank if it won all three) stayed as it was.  That points
at a limit by shape (the pair compact only when sparse, gate/up alone never), drawn from those three rows; this run
checks it against more.

Variants, every one on the same layers (batch 1, bf16 activations and factors), each in its own CUDA graph, timed in
turn round after round (`kernel_speed.time_switch_variants`): ``rho1`` (shipped), ``rho1_splitk`` (rho 1 on the
split-K launch, forced with `set_config`: whether the compact path still pays without rank on this card), ``compact``
(rho 0.8, limits of 1: the compact path wherever the shape allows, as shipped) and ``splitk`` (rho 0.8, limits of 0).
Rows: the pair at 50, 60 and 70 % (active shares at rho 0.8 of 0.40, 0.32, 0.24), gate/up alone at 60 and 70 % (at
50 % its share is above the compact limit, so every setting launches the same).

Adoption rule, written before kernel run 64: "pair" becomes 0.35 if ``splitk`` beats ``compact`` at 50 % and
``compact`` beats ``splitk`` at 60 and 70 %; 0 if ``splitk`` wins all three; otherwise it stays.  "single" becomes 0
if ``splitk`` wins both of its rows; otherwise it stays.  ``rho1_splitk`` only informs (the compact path's limits
without rank came from the H200, runs 6 and 8).  Each variant's projections are checked against the PyTorch
reference once, each alone (so the pair's check does not run its fused launch; the tests cover both paths).  Prints
JSON lines; writes ``--out``/wide_lowrank_path.jsonl.

    python benchmarks/ablations/wide_lowrank_path.py --out $OUT
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import time_switch_variants, variant_timing, write_row  # noqa: E402

# name: (rho, RANKED_COMPACT_MAX_ACTIVE for both shapes or None for the shipped value, split-K forced)
VARIANTS = {"rho1": (1.0, None, False), "rho1_splitk": (1.0, None, True), "compact": (0.8, 1.0, False),
            "splitk": (0.8, 0.0, False)}
PAIR, SINGLE = "gate+up fused 4096->2x14336", "gate/up 4096->14336"
ROWS = [(PAIR, 0.5), (PAIR, 0.6), (PAIR, 0.7), (SINGLE, 0.6), (SINGLE, 0.7)]
# The one-token split-K launch without rank, as choose_config builds it.
SPLITK = dict(block_k=8, block_m=1024, programs_per_sm=4, num_warps=4, num_stages=1)


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
    shipped = K.RANKED_COMPACT_MAX_ACTIVE

    def setting(limit, force_splitk):
        def apply():
            K.RANKED_COMPACT_MAX_ACTIVE = shipped if limit is None else {"pair": limit, "single": limit}
            K.set_config(K.Config(**SPLITK) if force_splitk else None, "gemv1")
        return apply

    with open(Path(args.out) / "wide_lowrank_path.jsonl", "w") as out:
        for name, s in ROWS:
            variants = {v: (rho, 16, setting(limit, force)) for v, (rho, limit, force) in VARIANTS.items()}
            res, copies = time_switch_variants(name, 1, s, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                               variants)
            setting(None, False)()
            for v, (rho, limit, force) in VARIANTS.items():
                write_row(out, {"case": name, "sparsity": s, "variant": v, "rho": rho,
                                "ranked_compact_max_active": limit, "splitk_forced": force, **variant_timing(res, v),
                                "copies": copies})
            out.flush()


if __name__ == "__main__":
    main()
