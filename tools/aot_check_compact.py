"""Compile the two-launch decode path (`rsparse.kernels.compact_gemv`) for sm_90 without a GPU
and print registers / spills / shared memory per variant (ptxas -v on Triton's PTX).

Needs a Triton wheel matching the GPU image (3.6.0) in its own environment; torch comes from
another environment appended to sys.path, e.g.:

    /tmp/t36/bin/python tools/aot_check_compact.py --torch-site /work/venv/lib/python3.11/site-packages
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--torch-site", required=True)
ap.add_argument("--dump", default="", help="folder for the ptx/sass of each variant")
args = ap.parse_args()
sys.path.append(args.torch_site)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from rsparse.kernels.compact_gemv import _compact_kernel, _gather_kernel  # noqa: E402

print("triton", triton.__version__, file=sys.stderr)
TARGET = GPUTarget("cuda", 90, 32)
INT_PTRS = ("idx", "cnt", "tc", "gcnt_ptr")
F32_PTRS = ("c", "tau", "xs", "z", "ws", "state_ptr")
DIV16 = ("sw", "slo", "sli", "n", "m")


def compile_kernel(fn, dtype, const, warps):
    sig, attrs = {}, {}
    names = fn.arg_names
    for i, a in enumerate(names):
        if a in const:
            sig[a] = "constexpr"
            continue
        base = a.rstrip("012") if a not in ("state_ptr", "gcnt_ptr", "x_ptr") else a
        if base in INT_PTRS:
            sig[a] = "*i32"
        elif base in F32_PTRS:
            sig[a] = "*fp32"
        elif base in ("x_ptr", "w", "li", "lo", "b", "out"):
            sig[a] = f"*{dtype}"
        else:
            sig[a] = "i32"
        if sig[a].startswith("*") or base in DIV16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": 1})


def ptxas_report(k):
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    ptxas = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    out = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    regs = re.findall(r"Used (\d+) registers", out.stderr)
    spill = re.findall(r"(\d+) bytes spill stores", out.stderr)
    return f"regs {regs} spill-stores {spill}"


GATHER = [  # dtype, has_lr, prefetch, block_k, block_m, warps
    ("bf16", False, True, 8, 1024, 4),
    ("bf16", False, True, 8, 1024, 4, True),
    ("bf16", False, 2, 8, 1024, 4),
    ("bf16", True, 2, 8, 1024, 4),
    ("bf16", False, 2, 8, 512, 2),
    ("bf16", False, False, 8, 1024, 4),
    ("bf16", True, True, 8, 1024, 4),
    ("bf16", False, True, 16, 1024, 4),
    ("bf16", False, True, 16, 2048, 8),
    ("bf16", False, True, 8, 512, 2),
    ("fp16", False, True, 8, 1024, 4),
    ("fp32", True, True, 8, 1024, 4),
]
COMPACT = [("bf16", False, 128, 64), ("bf16", True, 128, 64), ("fp32", True, 128, 64)]  # dtype, has_lr, block_n, block_r

if __name__ == "__main__":
    for dt, lr, pf, bk, bm, w, *rest in GATHER:
        pdl = bool(rest and rest[0])
        v = ("gather", dt, lr, pf, bk, bm, w, "pdl" if pdl else "")
        try:
            const = dict(BIAS0=False, BIAS1=True, BIAS2=False, HAS_LR=lr, PREFETCH=int(pf), BLOCK_K=bk, BLOCK_M=bm, PDL=pdl)
            k = compile_kernel(_gather_kernel, dt, const, w)
            print(v, ptxas_report(k), "shared", k.metadata.shared, flush=True)
            if args.dump:
                d = Path(args.dump) / "_".join(map(str, v))
                d.mkdir(parents=True, exist_ok=True)
                for ext in ("ptx", "ttgir"):
                    (d / f"k.{ext}").write_text(k.asm[ext])
        except Exception as e:
            print(v, "FAILED", type(e).__name__, str(e)[-800:], flush=True)
    for dt, lr, bn, br in COMPACT:
        v = ("compact", dt, lr, bn, br)
        try:
            k = compile_kernel(_compact_kernel, dt, dict(HAS_LR=lr, BLOCK_N=bn, BLOCK_R=br, PDL=True), 4)
            print(v, ptxas_report(k), "shared", k.metadata.shared, flush=True)
        except Exception as e:
            print(v, "FAILED", type(e).__name__, str(e)[-800:], flush=True)
