"""One token on long inputs (down_proj): z items of 256 ranks over 8-channel steps (`PACKED_LONG_INPUT_WIDE_Z`)
against 128 ranks over 16-channel steps, rho 1 and cuBLAS dense in the same run.  GPU only.

The one-token launch puts its z items first in the grid; with packed 4-bit factors' rank (1 273 on 14336 -> 4096 at
rho 0.8) they are 2 240 items of 4 steps of 16 channels x 128 ranks, and the weight items wait for slots behind them.
256 ranks over twice the steps of 8 channels cover the same channels with half the items (96 registers on sm_90
against the shipped tiles' 118).  Kernel run 57 (H100) timed it once, as ``lr_ahead.py``'s ``4bit_r256``: down
42.88 -> 39.09 us, gate/up 35.82 -> 42.22 us (so only inputs at least twice the outputs take it).  This is the
confirming run, at 50 and 70 %, and with bf16 factors too (rank 318: 672 z items -> 448).  Kernel run 58 (H100)
confirmed it for packed factors (on since), and found bf16 factors slower with these tiles.

Variants, every one on the same layers (batch 1, bf16 activations), each in its own CUDA graph, timed in turn round
after round (`kernel_speed.alternating_us`):

* ``rho1``: the layer at rho 1 (no low-rank path);
* ``bf16`` / ``bf16_wide``: rho 0.8, bf16 factors, shipped tiles / the wide z tiles;
* ``4bit`` / ``4bit_wide``: rho 0.8, packed 4-bit factors (the default), `PACKED_LONG_INPUT_WIDE_Z` off / on (on is
  shipped);
* ``4bit_steps8``: 128 ranks over 8 steps of 16 channels (half the items by length, not width);
* ``4bit_wide_steps16``: 256 ranks over 16 steps of 8 channels (a quarter of the items);
* ``dense``: cuBLAS ``F.linear`` on the same weights.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes ``--out``/long_input_z.jsonl.

    python benchmarks/ablations/long_input_z.py --out $OUT
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import CASES, time_switch_variants, variant_timing, write_row  # noqa: E402

# name: (rho, factor bits, module switches, Config changes over the shipped one through the override table)
WIDE = {"block_r": 256, "block_kz": 8, "z_steps": 8}
VARIANTS = {
    "rho1": (1.0, 16, {}, None),
    "bf16": (0.8, 16, {}, None),
    "bf16_wide": (0.8, 16, {}, WIDE),
    "4bit": (0.8, 4, {"PACKED_LONG_INPUT_WIDE_Z": False}, None),
    "4bit_wide": (0.8, 4, {"PACKED_LONG_INPUT_WIDE_Z": True}, None),
    "4bit_steps8": (0.8, 4, {"PACKED_LONG_INPUT_WIDE_Z": False}, {"z_steps": 8}),
    "4bit_wide_steps16": (0.8, 4, {}, {**WIDE, "z_steps": 16}),
}
SWITCHES = ("PACKED_LONG_INPUT_WIDE_Z",)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sparsities", nargs="*", type=float, default=[0.5, 0.7])
    p.add_argument("--cases", nargs="*", default=["down 14336->4096"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shipped = {flag: getattr(K, flag) for flag in SWITCHES}

    def switches(flags, changes, bits, n, m_total, s):
        # The tiles go straight into the table `set_config` fills: set_config also drops the eager graphs, and
        # this runs before every call, inside the captures.
        def apply():
            K._OVERRIDE.pop("gemv1", None)
            for flag in SWITCHES:
                setattr(K, flag, flags.get(flag, shipped[flag]))
            if changes:
                cfg = K.choose_config(n, m_total, False, 2, (1 - s) * 0.8, True, bits == 4)
                K._OVERRIDE["gemv1"] = dataclasses.replace(cfg, **changes)
        return apply

    with open(Path(args.out) / "long_input_z.jsonl", "w") as out:
        for s in args.sparsities:
            for name in args.cases:
                n, ms = CASES[name]
                variants = {v: (rho, bits, switches(flags, changes, bits, n, sum(ms), s))
                            for v, (rho, bits, flags, changes) in VARIANTS.items() if v in args.variants}
                res, copies = time_switch_variants(name, 1, s, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                                   variants)
                for flag in SWITCHES:
                    setattr(K, flag, shipped[flag])
                K._OVERRIDE.pop("gemv1", None)
                for v in args.variants:
                    rho, bits, flags, changes = VARIANTS[v]
                    write_row(out, {"case": name, "sparsity": s, "variant": v, "rho": rho, "factor_bits": bits,
                                    **flags, "tiles": changes, **variant_timing(res, v), "copies": copies})

if __name__ == "__main__":
    main()
