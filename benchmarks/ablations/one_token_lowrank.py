"""One token with a low-rank path: how packed 4-bit levels become floats (`PACKED_LEVELS`) in the split-K launch,
against bf16 factors, rho 1 and cuBLAS dense in the same run.  GPU only.

* `PACKED_LEVELS` (packed 4-bit factors): each level q (0..15) of a z item or a low-rank item becomes a float before
  its FMA.  "convert" (shipped): `q.to(float32)`, an I2F (a quarter-rate unit on sm_90) once per factor element,
  1 274 x 14336 of them in gate/up's low-rank rows at rho 0.8.  "bits": 0x4B000000 | q is 2^23 + q in fp32, less
  2^23 (an OR and a full-rate add, the same values).  "biased": 0x43000000 | q << 16 is 128 + q, used as it is, with
  the 128 taken out once per row and step (one FMA per element instead of two).  "biased_rows": "biased" in the
  low-rank items' rows only, "convert" in the z items (kernel run 59: "biased" paid on gate/up, lost on down_proj,
  whose rank spends most of its elements in z).
* Kernel run 59 also timed `LOWRANK_AMONG_WEIGHTS` here (low-rank items spread among the weight items): slower on
  every case, removed (the last commit with it is cc3c417).
* Kernel run 61 (H100) timed `Z_LAUNCH` here (z in a launch of its own, then the low-rank items among the weight
  items): 16-26 % slower with packed factors, 14-34 % with bf16 ones; removed (the last commit with it is 2934b5b).
* Kernel run 63 (H100) timed `LR_AFTER_WAVE` here (one token's low-rank items spread among the weight items after
  the first wave instead of last): slower on all four packed cases (gate/up 34.11 -> 40.06 us, down 38.54 -> 41.77,
  gate+up 63.06 -> 72.98, q/k/v + o 38.13 -> 41.59) and on the bf16 ones it touches; removed (the last commit with
  it is 960e80b).

Variants, every one on the same layers (batch 1, bf16 activations), each in its own CUDA graph, timed in turn round
after round (`kernel_speed.alternating_us`): ``rho1``; ``bf16`` (rho 0.8, bf16 factors); ``4bit_shipped`` (rho 0.8,
packed 4-bit factors, the default, levels by shape: `PACKED_LEVELS`, `PACKED_LONG_INPUT_LEVELS`); ``dense`` (cuBLAS
``F.linear`` on the same weights); ``4bit_byte_rows``: "byte_rows" for every shape (the low-rank rows read a byte
row at a time, two levels from each byte by one mask each; 357 instructions per 8-row step against 574 for
"biased_rows" in the offline sm_90 build, the same 96 registers); ``4bit_byte_rows_z``: "byte_rows_z" for every
shape (the same in the z items: 374 instructions per 16-channel step against 541, 80 registers).  Wide launches took
"biased_rows" from kernel run 60 and take "byte_rows_z" since run 66; long-input ones (down_proj) take "convert";
``--levels`` adds ``4bit_convert``, ``4bit_bits``, ``4bit_biased`` and ``4bit_biased_rows`` (each setting for every
shape; timed in kernel runs 59-61).

Adoption rule for "byte_rows" and "byte_rows_z", written before their run (kernel run 66): for wide launches
(`PACKED_LEVELS`: gate/up, gate+up and q/k/v + o) and for long inputs (`PACKED_LONG_INPUT_LEVELS`: down) apart, the
faster of ``4bit_byte_rows`` and ``4bit_byte_rows_z`` replaces the shipped setting if it beats ``4bit_shipped`` on
every case of that kind; and only if `test_gpu_packed_switches_match_the_fp64_rule` passes with it in the same call.
Kernel run 66 (H100, benchmarks/results/run66_h100/accept): both beat "biased_rows" on every wide case and lost to
"convert" on down; "byte_rows_z" was the faster on two of three wide cases and in sum, so wide launches took it.

Each variant is checked against the PyTorch reference once.  Prints JSON lines; writes
``--out``/one_token_lowrank.jsonl.

    python benchmarks/ablations/one_token_lowrank.py --out $OUT
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import time_switch_variants, variant_timing, write_row  # noqa: E402

# name: (rho, factor bits, module switches over the shipped ones)
VARIANTS = {
    "rho1": (1.0, 16, {}),
    "bf16": (0.8, 16, {}),
    "4bit_shipped": (0.8, 4, {}),
    "4bit_byte_rows": (0.8, 4, {"PACKED_LEVELS": "byte_rows", "PACKED_LONG_INPUT_LEVELS": "byte_rows"}),
    "4bit_byte_rows_z": (0.8, 4, {"PACKED_LEVELS": "byte_rows_z", "PACKED_LONG_INPUT_LEVELS": "byte_rows_z"}),
}
SWITCHES = ("PACKED_LEVELS", "PACKED_LONG_INPUT_LEVELS")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sparsities", nargs="*", type=float, default=[0.5])
    p.add_argument("--levels", action="store_true", help="also every PACKED_LEVELS setting for every shape")
    p.add_argument("--cases", nargs="*", default=["gate/up 4096->14336", "down 14336->4096",
                                                   "gate+up fused 4096->2x14336", "qkv fused + o"])
    args = p.parse_args()
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    shipped = {name: getattr(K, name) for name in SWITCHES}

    def setting(flags):
        def apply():
            for name in SWITCHES:
                setattr(K, name, flags.get(name, shipped[name]))
        return apply

    chosen = dict(VARIANTS)
    if args.levels:
        chosen.update({f"4bit_{v}": (0.8, 4, {"PACKED_LEVELS": v, "PACKED_LONG_INPUT_LEVELS": v})
                       for v in ("convert", "bits", "biased", "biased_rows")})
    with open(Path(args.out) / "one_token_lowrank.jsonl", "w") as out:
        for s in args.sparsities:
            for name in args.cases:
                variants = {v: (rho, bits, setting(flags)) for v, (rho, bits, flags) in chosen.items()}
                res, copies = time_switch_variants(name, 1, s, torch.bfloat16, "cuda", gen, args.reps, args.rounds,
                                                   variants)
                setting({})()
                for v, (rho, bits, flags) in chosen.items():
                    write_row(out, {"case": name, "sparsity": s, "variant": v, "rho": rho, "factor_bits": bits,
                                    **flags, **variant_timing(res, v), "copies": copies})
                out.flush()


if __name__ == "__main__":
    main()
