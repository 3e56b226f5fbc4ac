"""Where the one-token split-K launch loses its time with packed 4-bit factors (kernel run 50: 163 us
against 29 us with bf16 factors at the same rank on an H100, so the unpacking, not the rank).

Times source variants of `rsparse.kernels.sparse_linear`, each a patched copy of the module loaded
under its own name, on one layer per shape (one token, 50 %, rho 0.8, the 4-bit budget's rank):

* ``original``; ``acc2d`` (the existing ``Config.acc2d``: 2-D partial sums, reduced once);
* ``no_lr`` / ``no_z`` / ``no_z_loop``: the low-rank items' row loop, the z items' unpacking or their
  whole loop removed (wrong results; they bound what each part costs);
* ``no_z_dot`` / ``no_lr_offset_dot`` (``--batch`` 2-16, the tensor-core path): the z part's unpacking and row
  sums, or the low-rank rows' offset term, removed (wrong results);
* ``token_mantissa`` (one token): the low-rank rows' levels written into mantissa bits 19-22 of 1.0 instead of
  converted (correct results; a candidate, TOKEN_HELPER).

Measured and removed from this script (their patches were written against commit dbfe39e's kernel; run 52,
``results/run52_h100/``): ``lr_offset_once_dot`` (the offset term summed once per low-rank item: no gain) and
``lr_levels_sub_dot`` / ``lr_levels_bias_dot`` / ``levels_bias_dot`` / ``levels_bias_once_dot`` (batches: levels
written into a float's mantissa instead of converted; ``levels_bias_dot`` is now the kernel's `_biased_levels`).

Kernel run 50's third call (one token, H100): only the low-rank items cost, through their per-step sum (a variant
that formed those rows as ``(z * step) @ q + z @ offset`` did not compile and was dropped).

    python benchmarks/ablations/packed_variants.py --out $OUT
    python benchmarks/ablations/packed_variants.py --batch 4 --variants original no_lr no_z_dot no_lr_offset_dot
"""
import argparse
import dataclasses
import importlib.util
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import L2_BYTES, alternating_us  # noqa: E402
from packed_one_token import SHAPES, build  # noqa: E402

import rsparse.kernels.sparse_linear as K  # noqa: E402

LR_LOOP = "    for k0 in range(k_start, k_end, BLOCK_K):\n        acc = _lr_rows("
Z_UNPACK = ("                if PACKED:  # formed in the sums' precision, as the reference forms it\n"
            "                    q = _nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)\n")
# Batches (tensor-core path): the z part's unpacking and per-step row sums, the low-rank rows' offset term.
Z_DOT = ("                    q = _nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)\n"
         "                    csum += tl.sum(coef, axis=1)\n")
LR_OFFSET_DOT = "            acc += tl.sum(z * off[None, :], axis=1)[:, None]\n"
Z_LOOP = "        for k0 in range(k_start, k_end, BLOCK_KZ):\n"
# One token (FMA path): the level written into mantissa bits 19-22 of 1.0 (bits 0x3F800000 | q << 19 are 1 + q / 16,
# exact), so a row costs a shift, a mask-and-or and one FMA per element: off + step * q = (off - 16 step) + 16 step * v,
# whose first term is the same for every column and is summed once per step (sums about 3x larger before they cancel).
TOKEN_HELPER = """@triton.jit
def _mantissa16(ptr, rows, cols, stride, mask):
    cols = (cols // 8) * 8 + cols % 8
    b = tl.load(ptr + (rows // 2)[:, None] * stride + cols[None, :], mask=mask, other=0)
    bits = ((b.to(tl.int32) << (19 - (rows % 2) * 4)[:, None]) & 0x780000) | 0x3F800000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _nibbles("""
NIBBLES_DEF = "@triton.jit\ndef _nibbles("
TOKEN_Q = "        q = _nibbles(lo_ptr, offs_k, offs_m, stride_lo, w_ok, not USE_DOT)\n"
TOKEN_Q_NEW = ("        if USE_DOT:\n"
               "            q = _nibbles(lo_ptr, offs_k, offs_m, stride_lo, w_ok, False)\n"
               "        else:\n"
               "            q = _mantissa16(lo_ptr, offs_k, offs_m, stride_lo, w_ok)\n")
TOKEN_ROWS = """        if PACKED:  # formed in the sums' precision, as the reference forms it
            w = off.to(ACC)[:, None] + step.to(ACC)[:, None] * q.to(ACC)
        # z rounded to fp32 (a no-op unless z was summed in fp64), as the reference rounds it.
        prod = z.to(tl.float32).to(ACC)[:, None] * w.to(ACC)
"""
TOKEN_ROWS_NEW = """        if PACKED:
            zf = z.to(tl.float32)
            prod = (zf * step * 16.0)[:, None] * q
            acc += tl.sum(zf * (off - 16.0 * step), axis=0)
        else:
            prod = z.to(tl.float32).to(ACC)[:, None] * w.to(ACC)
"""
PATCHES = {
    "original": [],
    "no_lr": [(LR_LOOP, LR_LOOP.replace("range(k_start, k_end", "range(k_start, k_start"))],
    "no_z": [(Z_UNPACK, Z_UNPACK.replace("_nibbles(li_ptr, offs_k, offs_r, stride_li, v_ok, False)",
                                         "tl.full([BLOCK_KZ, BLOCK_R], 3, tl.int32)"))],
    "no_z_loop": [(Z_LOOP, Z_LOOP.replace("range(k_start, k_end", "range(k_start, k_start"))],
    "no_z_dot": [(Z_DOT, "                    q = tl.full([BLOCK_KZ, BLOCK_R], 3, tl.int32)\n")],
    "no_lr_offset_dot": [(LR_OFFSET_DOT, "")],
    "token_mantissa": [(NIBBLES_DEF, TOKEN_HELPER), (TOKEN_Q, TOKEN_Q_NEW), (TOKEN_ROWS, TOKEN_ROWS_NEW)],
}


def variant(name: str, tmp: Path):
    src = Path(K.__file__).read_text()
    for old, new in PATCHES[name]:
        if src.count(old) != 1:
            raise ValueError(f"patch of {name} must match once, matched {src.count(old)}")
        src = src.replace(old, new)
    path = tmp / f"sl_variant_{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"sl_variant_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="tokens per call (2-16: the tensor-core path)")
    p.add_argument("--variants", nargs="*", default=None, help="only these variants (default: all)")
    args = p.parse_args()
    from rsparse.budget import layer_budget
    from rsparse.ops import sparse_linear_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    s, rho = 0.5, 0.8
    tmp = Path(tempfile.mkdtemp())
    mods = {name: variant(name, tmp) for name in (args.variants or PATCHES)}
    out = open(Path(args.out) / "packed_variants.jsonl", "w")
    for shape, (n, m) in SHAPES.items():
        r4 = layer_budget(n, m, s, rho, 4).r
        x = torch.randn(args.batch, n, device="cuda", dtype=torch.bfloat16, generator=gen)
        copies = max(2, math.ceil(3 * L2_BYTES / (n * m * 2)))
        layers = [build(n, m, s, rho, r4, 4, x, gen) for _ in range(copies)]
        ref = sparse_linear_reference(x, *(getattr(layers[0], a) for a in ("weight_t", "c", "tau", "lowrank_in",
                                                                            "lowrank_out", "bias")),
                                      None, layers[0].factor_ranges()).double()
        runs = [(name, mod, None) for name, mod in mods.items()]
        if args.batch == 1 and "original" in mods:
            base = mods["original"].choose_config(n, m, False, 2, rho * (1 - s), True, True)
            runs.append(("acc2d", mods["original"], dataclasses.replace(base, acc2d=True)))
        for name, mod, cfg in runs:
            mod.set_config(cfg, "gemv1")

            def call(L, mod=mod):
                return mod.sparse_linear_multi(x, [L.weight_t], [L.c], [L.tau], [L.lowrank_in], [L.lowrank_out],
                                               [None], active_fraction=rho * (1 - s),
                                               lowrank_quant=[L.factor_ranges()])[0]
            try:
                y = call(layers[0]).double()
                err = ((y - ref).norm() / ref.norm()).item()
                us = alternating_us({"v": [lambda L=L: call(L) for L in layers]}, copies, args.reps, 2)["v"]
                row = {"shape": shape, "batch": args.batch, "rank": r4, "variant": name, "us": round(statistics.median(us), 2),
                       "us_rounds": [round(u, 2) for u in us], "rel_err": err}
            except Exception as e:
                row = {"shape": shape, "variant": name, "error": repr(e)[:400]}
            finally:
                mod.set_config(None, "gemv1")
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
        del layers
    out.close()


if __name__ == "__main__":
    main()
