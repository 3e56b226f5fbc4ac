"""Compile the split-K decode launch (`rsparse.kernels.sparse_linear._splitk_kernel`) for sm_90 without a GPU
and print registers and local memory per variant (cuobjdump on the cubin Triton builds): the one-token q/k/v launch of a
Llama-3-8B layer with the folded norm, with and without ranks, with 4-bit packed factors, and the batched (tensor-core)
launch with plain and packed factors.

Register allocation is static: registers an epilogue needs are paid by every weight item, and above 128 per
thread (4 warps) a multiprocessor holds fewer than the 4 programs the one-wave grid plans. Use a Triton wheel
that matches the GPU image (3.6.0) in its own environment; torch comes from another one appended to sys.path:

    /tmp/t36/bin/python tools/aot_check_splitk.py --torch-site /work/venv/lib/python3.11/site-packages [--loops]
    ... --dot-tiles 32,256,4,3 32,512,8,3      # only the batched launch without rank, at these tiles
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--torch-site", default="", help="site-packages with torch, when this Python has none")
ap.add_argument("--loops", action="store_true",
                help="also print the shape of each one-token launch's loops that load weights or factors: one letter "
                     "per SASS instruction (L a global load, F an fp32 add/multiply/FMA, I an int-to-float conversion)")
ap.add_argument("--dot-tiles", nargs="+", metavar="BK,BM,WARPS,STAGES",
                help="only the batched launch without rank (bf16), at each of these tiles: what a multiprocessor fits")
ap.add_argument("--every-row", action="store_true",
                help="with --dot-tiles: the launch that loads every row (Config.every_row)")
ap.add_argument("--prewait", action="store_true",
                help="only the one-token launch at each PREWAIT (sparse_linear: reads before the PDL wait)")
ap.add_argument("--ir-dir", default="",
                help="with --dot-tiles: write each build's TTGIR there, to read how its loops were pipelined")
args = ap.parse_args()
if args.torch_site:
    sys.path.append(args.torch_site)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from rsparse.kernels.sparse_linear import _splitk_kernel  # noqa: E402

print("triton", triton.__version__, file=sys.stderr)
TARGET = GPUTarget("cuda", 90, 32)
F32_PTRS = ("c", "tau", "z", "ws", "lq")
INT_PTRS = ("zc", "cnt", "gcnt_ptr")
FLOATS = ("eps",)
# Integers the JIT would see divisible by 16 at Llama-3-8B's q/k/v (n 4096, widths 4096/1024, row strides;
# "slo", lowrank_out's row stride, is the width: without it the packed rows' layout differs from the GPU's).
DIV16 = ("stride_xt", "n", "sw", "so", "m", "stride_r", "slo")
# The batched launch's items are whole 32-row steps, so the JIT sees their length ("rows") divisible by 16 as well;
# without it the x and c loads lose their 4-byte vectors and are not pipelined (one-token items need not be: 232 rows).
DOT_DIV16 = DIV16 + ("rows",)


def compile_splitk(dtype: str, const: dict, warps: int = 4, stages: int = 1):
    sig, attrs = {}, {}
    names = _splitk_kernel.arg_names
    for i, a in enumerate(names):
        if a in const:
            sig[a] = "constexpr"
            continue
        base = a.rstrip("012") if a not in ("gcnt_ptr",) else a
        if base in INT_PTRS:
            sig[a] = "*i32"
        elif base in F32_PTRS:
            sig[a] = "*fp32"
        elif base in FLOATS:
            sig[a] = "fp32"
        elif base in ("li", "lo") and const.get("PACKED"):
            sig[a] = "*u8"
        elif a.endswith("_ptr") or base in ("w", "li", "lo", "b", "out"):
            sig[a] = f"*{dtype}"
        else:
            sig[a] = "i32"
        if sig[a].startswith("*") or base in (DOT_DIV16 if const.get("USE_DOT") else DIV16):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(_splitk_kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def resource_report(k) -> str:
    """Registers, stack and local memory of the cubin Triton built (its own ptxas), read with cuobjdump; then the
    dynamic shared memory Triton asks for at launch and the asynchronous global-to-shared copies (LDGSTS) in the
    SASS: nonzero where the software pipeline of `num_stages` > 1 stages the loads through shared memory."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    usage = re.findall(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not usage:
        return f"no usage line: {out[-200:]!r}"
    sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True).stdout
    return "registers {} stack {} shared {} local {}".format(*usage[0]) + \
        f" dynamic shared {k.metadata.shared} LDGSTS {sass.count('LDGSTS')}"


def loop_bodies(k) -> list[list[str]]:
    """The SASS instructions of each loop of the cubin Triton built (a backward branch and what it jumps over)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    sass = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True).stdout
    ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,6})\*/\s*(.*?);", sass)]
    index = {a: i for i, (a, _) in enumerate(ins)}
    bodies = []
    for i, (a, t) in enumerate(ins):
        target = re.search(r"BRA (0x[0-9a-f]+)", t)
        if target and int(target.group(1), 16) < a and int(target.group(1), 16) in index:
            bodies.append([x for _, x in ins[index[int(target.group(1), 16)]: i + 1]])
    return bodies


def loop_shapes(k) -> list[str]:
    """Each distinct loop of the cubin that loads globally and multiplies, as one letter per
    instruction: where ptxas placed the loads against the products. A loop whose next-step loads come after its
    products still waits one memory round trip per step (in the thirty-fourth session ptxas had placed the loads
    of a packed low-rank loop so, though the source issued them first)."""
    shapes = []
    for body in loop_bodies(k):
        shape = "".join("L" if "LDG" in x else "F" if re.match(r"(@\S+ )?F(FMA|ADD|MUL)", x) else
                        "I" if "I2F" in x else "." for x in body)
        if "L" in shape and "F" in shape and shape not in shapes:
            shapes.append(shape)
    return shapes


def dot_loops(k) -> str:
    """The loops of the cubin that hold tensor-core products (HMMA, or HGMMA: warp-group MMAs): instructions,
    barriers (BAR.SYNC), shuffles (SHFL), shared-memory loads (LDS) and the products in each."""
    found = [f"loop of {len(body)}: {sum('BAR.SYNC' in x for x in body)} BAR.SYNC, "
             f"{sum('SHFL' in x for x in body)} SHFL, {sum(x.startswith('LDS') or ' LDS' in x for x in body)} LDS, "
             f"{sum('HGMMA' in x for x in body)} HGMMA, {sum('HMMA' in x for x in body)} HMMA"
             for body in loop_bodies(k) if any("HMMA" in x or "HGMMA" in x for x in body)]
    return "; ".join(found) or "no HMMA loop"


def batched(bk: int, bm: int) -> dict:
    """Constexprs of the batched (tensor-core) launch at ``bk`` x ``bm`` tiles, without z items or packed factors."""
    return dict(
        BIAS0=False, BIAS1=False, BIAS2=False, USE_DOT=True, FP32=False, ACC2D=False, BLOCK_T=16, BLOCK_K=bk,
        BLOCK_M=bm, BLOCK_KZ=32, BLOCK_R=64, RESET=True, Z_SKIP_ACTIVE=False, Z_ITEMS=False, RESET_STATE=True,
        XC_AHEAD=False, PRENORM=False, NORM_BLOCK=1, RES0=False, NORM_AHEAD=False, PDL=True, ACC=tl.float32,
        PER_TOKEN=False, PACKED=False, EVERY_ROW=False, PREWAIT=0,
    )


def one_token(ranks: bool, packed=False, kz: int = 16, br: int = 128, block_k: int = 8, prewait: int = 0,
              prenorm: bool | None = None) -> dict:
    """Constexprs of the one-token launch (1024-column tiles); the norm folds in only without rank, by default."""
    prenorm = not ranks if prenorm is None else prenorm
    return dict(
        T=1, BIAS0=False, BIAS1=False, BIAS2=False, USE_DOT=False, FP32=False, ACC2D=False, BLOCK_T=1,
        BLOCK_K=block_k, BLOCK_M=1024, BLOCK_KZ=kz, BLOCK_R=br, RESET=True, Z_SKIP_ACTIVE=True, Z_ITEMS=ranks,
        RESET_STATE=ranks, XC_AHEAD=True, PRENORM=prenorm, NORM_BLOCK=4096 if prenorm else 1, RES0=False,
        NORM_AHEAD=False, PDL=True, ACC=tl.float32, PER_TOKEN=False, PACKED=packed, EVERY_ROW=False, PREWAIT=prewait,
    )


if args.prewait:
    # sparse_linear.PREWAIT: what a one-token weight item reads before its wait (0, 1, 2), 8- and 16-row steps
    for ranks, prenorm in ((False, True), (False, False), (True, False)):
        for block_k in (8, 16):
            for prewait in (0, 1, 2):
                kernel = compile_splitk("bf16", one_token(ranks, block_k=block_k, prewait=prewait, prenorm=prenorm))
                print(f"bf16 one token, ranks={ranks} norm={prenorm} {block_k}-row steps, PREWAIT {prewait}: "
                      f"{resource_report(kernel)}", flush=True)
                if args.loops:
                    for shape in loop_shapes(kernel):
                        print(f"  loop of {len(shape)} instructions: {shape[:200]}")
    sys.exit(0)

if args.dot_tiles:
    for spec in args.dot_tiles:
        bk, bm, warps, stages = (int(v) for v in spec.split(","))
        try:
            kernel = compile_splitk("bf16", dict(batched(bk, bm), EVERY_ROW=args.every_row), warps=warps, stages=stages)
            report = resource_report(kernel) + " | " + dot_loops(kernel)
            if args.ir_dir:
                Path(args.ir_dir).mkdir(parents=True, exist_ok=True)
                stem = Path(args.ir_dir) / f"dot_{bk}x{bm}_{warps}w_{stages}s{'_every_row' if args.every_row else ''}"
                stem.with_suffix(".ttgir").write_text(kernel.asm["ttgir"])
        except Exception as e:
            report = f"FAILED {e!r}"[:300]
        print(f"bf16 batch (dot {bk}x{bm}, {warps} warps, {stages} stages), no ranks: {report}", flush=True)
    sys.exit(0)

for dtype in ("bf16", "fp16"):
    # (ranks, packed, (block_kz, block_r)): the z tiles of most launches, and PACKED_LONG_INPUT_WIDE_Z's for long
    # inputs; packed 2-6 form some of the levels' floats from their bits (PACKED_LEVELS "bits", "biased",
    # "biased_rows", "byte_rows", "byte_rows_z")
    for ranks, packed, (kz, br) in (
            (False, False, (16, 128)), (True, False, (16, 128)), (True, True, (16, 128)), (True, False, (8, 256)),
            (True, True, (8, 256)), (True, 2, (16, 128)), (True, 2, (8, 256)), (True, 3, (16, 128)),
            (True, 3, (8, 256)), (True, 4, (16, 128)), (True, 4, (8, 256)),
            (True, 5, (16, 128)), (True, 5, (8, 256)), (True, 6, (16, 128)), (True, 6, (8, 256))):
        const = one_token(ranks, packed, kz, br)  # the split-K launch folds the norm only without rank
        kernel = None
        try:
            kernel = compile_splitk(dtype, const)
            report = resource_report(kernel)
        except Exception as e:  # a variant that does not build is the finding
            report = f"FAILED {e!r}"[:300]
        print(f"{dtype} one token, ranks={ranks} packed={packed} z tiles {kz}x{br}: {report}",
              flush=True)
        if args.loops and kernel is not None:
            for shape in loop_shapes(kernel):
                print(f"  loop of {len(shape)} instructions:")
                for j in range(0, len(shape), 120):
                    print(f"    {j:4d} {shape[j:j + 120]}")
    # 2-16 tokens without rank on dense-ish layers: 32 x 256 tiles over 3 stages, 4 warps for 2-3 tokens
    # (DOT_DENSE_FEW_TOKENS_CONFIG), 8 from 4 tokens (DOT_DENSE_CONFIG)
    const = batched(32, 256)
    for warps in (4, 8):
        for every_row in (False, True):  # Config.every_row (EVERY_ROW_MIN_UNION decides)
            report = resource_report(compile_splitk(dtype, dict(const, EVERY_ROW=every_row), warps=warps, stages=3))
            print(f"{dtype} batch (dot 32x256, {warps} warps, 3 stages), no ranks, every_row={every_row}: {report}",
                  flush=True)
    for z_items in (False, True):  # 2-16 tokens with ranks: z in the first weight items, or items of its own
        for packed in (False, True):  # DOT_CONFIG's tiles (16 x 512, 3 stages), packed also PACKED_DOT_CONFIG's 1
            const = dict(batched(16, 512), Z_ITEMS=z_items, PACKED=packed)
            for stages in (3, 1) if packed else (3,):
                try:
                    report = resource_report(compile_splitk(dtype, const, stages=stages))
                except Exception as e:
                    report = f"FAILED {e!r}"[:300]
                print(f"{dtype} batch (dot, {stages} stages), ranks=True packed={packed} z_items={z_items}: {report}",
                      flush=True)
