"""Prototype (twenty-eighth session, not in the package): a one-token GEMV whose dropped channels read a low-bit copy.

`lowbit_rest.py` found that at equal bytes a 4-bit copy of the weight for the inactive channels brings
SmolLM2 at target 0.5 within 1.7 % of dense perplexity (channels alone: +61 %).  This asks whether a
kernel can stream those bytes as fast as the shipped one streams its channels.  Per input channel ``j``
(a row of ``Wᵀ``): active (``|x_j| c_j > tau``) -> the bf16 row; inactive -> the packed ``BITS``-bit
row (``8 / BITS`` values a byte along the outputs, an fp16 scale and offset per ``GROUP`` outputs),
dequantized in registers.  Every row is read once, in one precision or the other.

Launch: run 4's one-token split-K shape (each program one ``BLOCK_M``-column tile and a chunk of rows,
about ``per_sm`` programs per multiprocessor, ``BLOCK_K`` rows a step), partial sums added into the
persistent zeroed workspace of `rsparse.kernels.compact_gemv` (its `_add_partial`: the last program of
a tile writes the output and leaves the workspace zero).  Outputs must be a multiple of ``BLOCK_M``.

    TRITON_INTERPRET=1 python benchmarks/ablations/lowbit_rest_gemv.py --check        # CPU, small shapes
    /tmp/t36/bin/python benchmarks/ablations/lowbit_rest_gemv.py --aot --torch-site /work/venv/lib/python3.11/site-packages
                                              # sm_90 build without a GPU (Triton 3.6 env): registers per setting
    PYTHONPATH=$PWD/src python benchmarks/ablations/lowbit_rest_gemv.py --out $OUT    # H200: check + timing

The timing compares, on Llama-3-8B gate/up (4096 -> 14336) and down (14336 -> 4096) shapes, bf16, batch 1,
CUDA graphs with weights rotated beyond L2 (`kernel_speed.py`'s helpers): cuBLAS dense, the shipped
channels-only kernel at 50 % (an `RSparseLinear`), and this kernel at equal bytes (4-bit rest: 30.4 %
of the channels in bf16; 2-bit: 40.7 %) over a few launch settings.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

if "--torch-site" in sys.argv:  # --aot from a Triton-only environment: torch comes from another one
    sys.path.append(sys.argv[sys.argv.index("--torch-site") + 1])
    del sys.argv[sys.argv.index("--torch-site") : sys.argv.index("--torch-site") + 2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from rsparse.kernels import compact_gemv as CG  # noqa: E402


def quantize_rows(w_t: torch.Tensor, bits: int, group: int):
    """``w_t`` ``[n, m]`` -> (packed uint8 ``[n, m * bits / 8]``, fp16 scale and offset ``[n, m / group]``):
    min/max quantization of each row in groups of ``group`` outputs, value ``i`` of a byte in bits
    ``[i * bits, (i + 1) * bits)``."""
    n, m = w_t.shape
    if m % group or 8 % bits:
        raise ValueError(f"outputs must be a multiple of group and bits divide 8, got m={m}, group={group}, bits={bits}")
    w = w_t.float().view(n, m // group, group)
    lo = w.amin(-1).half()
    scale = ((w.amax(-1) - w.amin(-1)) / (2**bits - 1)).clamp_min(1e-8).half()
    q = ((w - lo.float()[..., None]) / scale.float()[..., None]).round().clamp(0, 2**bits - 1).to(torch.uint8)
    q = q.view(n, m // (8 // bits), 8 // bits)
    packed = torch.zeros(n, m // (8 // bits), dtype=torch.uint8, device=w_t.device)
    for i in range(8 // bits):
        packed |= q[..., i] << (i * bits)
    return packed, scale, lo


def dequantize_rows(packed, scale, lo, bits: int, group: int) -> torch.Tensor:
    n = packed.shape[0]
    vals = torch.stack([(packed >> (i * bits)) & (2**bits - 1) for i in range(8 // bits)], -1).view(n, -1).float()
    m = vals.shape[1]
    return (vals.view(n, m // group, group) * scale.float()[..., None] + lo.float()[..., None]).view(n, m)


def reference(x, w_t, c, tau, packed, scale, lo, bits, group) -> torch.Tensor:
    """fp32 ``x_active @ Wᵀ + x_inactive @ Ŵᵀ`` (``x`` ``[1, n]``), the mask as `rsparse.ops.active_mask`."""
    active = x.abs().float() * c > tau
    w_hat = dequantize_rows(packed, scale, lo, bits, group)
    return torch.where(active, x.float(), 0.0) @ w_t.float() + torch.where(active, 0.0, x.float()) @ w_hat


@triton.jit
def _unpack(qb, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    # [BLOCK_K, BLOCK_M * BITS / 8] bytes -> [BLOCK_K, BLOCK_M] values in output order.
    mask: tl.constexpr = (1 << BITS) - 1
    if BITS == 4:
        v = tl.join(qb & mask, qb >> 4)
    else:  # 2 bits, four values a byte: join's new axis is the last, so pair (v0, v2) and (v1, v3) first
        v = tl.join(tl.join(qb & mask, (qb >> 4) & mask), tl.join((qb >> 2) & mask, qb >> 6))
    return tl.reshape(v, [BLOCK_K, BLOCK_M]).to(tl.float32)


@triton.jit
def _rest_gemv_kernel(x_ptr, c_ptr, tau_ptr, w_ptr, q_ptr, s_ptr, lo_ptr, ws_ptr, tcnt_ptr, out_ptr,
                      n, m, rows, chunks, stride_w, stride_q, stride_s,
                      BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
                      PDL: tl.constexpr):
    CG.pdl_enter(PDL)
    pid = tl.program_id(0)
    tiles = m // BLOCK_M
    chunk = pid // tiles
    tile = pid % tiles
    PER: tl.constexpr = 8 // BITS
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m
    offs_b = tile * (BLOCK_M // PER) + tl.arange(0, BLOCK_M // PER)
    offs_g = tile * (BLOCK_M // GROUP) + tl.arange(0, BLOCK_M // GROUP)
    tau = tl.load(tau_ptr)
    k0 = chunk * rows
    k1 = tl.minimum(k0 + rows, n)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k in range(k0, k1, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k1
        xf = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + offs_k, mask=k_ok, other=0.0)
        act = (tl.abs(xf) * cv > tau) & k_ok
        rest = (act == 0) & k_ok
        w = tl.load(w_ptr + offs_k[:, None] * stride_w + offs_m[None, :], mask=act[:, None], other=0.0)
        qb = tl.load(q_ptr + offs_k[:, None] * stride_q + offs_b[None, :], mask=rest[:, None], other=0)
        sc = tl.load(s_ptr + offs_k[:, None] * stride_s + offs_g[None, :], mask=rest[:, None], other=0.0).to(tl.float32)
        lo = tl.load(lo_ptr + offs_k[:, None] * stride_s + offs_g[None, :], mask=rest[:, None], other=0.0).to(tl.float32)
        deq = tl.reshape(tl.reshape(_unpack(qb, BITS, BLOCK_K, BLOCK_M), [BLOCK_K, BLOCK_M // GROUP, GROUP])
                         * sc[:, :, None] + lo[:, :, None], [BLOCK_K, BLOCK_M])
        val = tl.where(act[:, None], w.to(tl.float32), deq)
        acc += tl.sum(xf[:, None] * val, axis=0)
    CG._add_partial(acc, tile, chunks, ws_ptr, tcnt_ptr, out_ptr, out_ptr, offs_m, m_ok, out_ptr,
                    False, BLOCK_M, False)


def rest_gemv(x, w_t, c, tau, packed, scale, lo, bits, group, out=None, block_k=8, block_m=512, per_sm=4,
              num_warps=4, sm_count=None):
    """One token ``x`` ``[1, n]`` -> ``[1, m]`` in ``x``'s dtype (see the module docstring)."""
    n, m = w_t.shape
    if m % block_m or block_m % group:
        raise ValueError(f"m must be a multiple of block_m and block_m of group, got {m}, {block_m}, {group}")
    if sm_count is None:
        sm_count = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    tiles = m // block_m
    chunks = max(1, sm_count * per_sm // tiles)
    rows = CG.cdiv(CG.cdiv(n, chunks), block_k) * block_k
    chunks = CG.cdiv(n, rows)
    _, (ws, tcnt) = CG.workspace_parts(x.device, [m, tiles], int32=(1,))
    out = torch.empty(1, m, dtype=x.dtype, device=x.device) if out is None else out
    pdl = CG.pdl_enabled(x.device)
    _rest_gemv_kernel[(chunks * tiles,)](
        x, c, tau, w_t, packed, scale, lo, ws, tcnt, out, n, m, rows, chunks, w_t.stride(0), packed.stride(0),
        scale.stride(0), BITS=bits, GROUP=group, BLOCK_K=block_k, BLOCK_M=block_m, PDL=pdl, num_warps=num_warps,
        num_stages=1, **CG.pdl_kwargs(pdl))
    return out


def kept_share(target: float, bits: int, group: int) -> float:
    """Share of channels in bf16 at equal bytes: ``k + f (1 - k) = 1 - target``, ``f = (bits + 32 / group) / 16``."""
    f = (bits + 32 / group) / 16
    return (1 - target - f) / (1 - f)


def make_case(n, m, keep, bits, group, dtype, device, gen, x=None):
    x = torch.randn(1, n, dtype=dtype, device=device, generator=gen) if x is None else x
    w_t = (torch.randn(n, m, dtype=torch.float32, device=device, generator=gen) * n**-0.5).to(dtype)
    c = w_t.float().norm(dim=1)
    tau = torch.quantile((x.abs().float() * c).flatten(), 1 - keep).reshape(())
    packed, scale, lo = quantize_rows(w_t, bits, group)
    return x, w_t, c, tau, packed, scale, lo


def check(device: str) -> list[dict]:
    """Relative error against `reference` on fresh random inputs: odd row counts, both bit widths, bf16 and fp16."""
    gen = torch.Generator(device=device).manual_seed(1)
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for n, m, bits, group, block_m in ((300, 128, 4, 32, 64), (77, 256, 2, 64, 128), (4096, 1024, 4, 64, 512)):
            if device == "cpu" and n > 1000:
                continue
            x, w_t, c, tau, packed, scale, lo = make_case(n, m, 0.4, bits, group, dtype, device, gen)
            ref = reference(x, w_t, c, tau, packed, scale, lo, bits, group).double()
            out = torch.full((1, m), float("nan"), dtype=dtype, device=device)
            y = rest_gemv(x, w_t, c, tau, packed, scale, lo, bits, group, out=out, block_m=block_m).double()
            err = ((y - ref).norm() / ref.norm()).item()
            rows.append({"dtype": str(dtype), "n": n, "m": m, "bits": bits, "group": group, "rel_err": err,
                         "nan": bool(torch.isnan(y).any())})
            print(json.dumps(rows[-1]), flush=True)
            if err > (1e-2 if dtype == torch.bfloat16 else 2e-3) or rows[-1]["nan"]:
                raise SystemExit(f"check failed: {rows[-1]}")
    # The dequantizer itself against the fake quantizer of lowbit_rest.py (same grid).
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(2))
    p, s, lo = quantize_rows(w, 4, 64)
    assert ((dequantize_rows(p, s, lo, 4, 64) - w).norm() / w.norm()) < 0.15
    return rows


def timing(out_dir: Path, reps: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch.nn.functional as F

    import kernel_speed as B
    import rsparse

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, n, m in (("gate/up 4096->14336", 4096, 14336), ("down 14336->4096", 14336, 4096)):
        copies = max(2, math.ceil(3 * B.L2_BYTES / (n * m * 2)))
        x = torch.randn(1, n, device="cuda", dtype=torch.bfloat16, generator=gen)
        dense_w = [torch.randn(m, n, device="cuda", dtype=torch.bfloat16, generator=gen) * n**-0.5 for _ in range(copies)]
        shipped = [B.build_layer(n, m, 0.5, 1.0, x, torch.bfloat16, "cuda", gen)[0] for _ in range(copies)]
        row = {"case": name, "copies": copies}
        calls = {"dense": [lambda w=w: F.linear(x, w) for w in dense_w], "channels 50%": [lambda l=l: l(x) for l in shipped]}
        for bits in (4, 2):
            keep = kept_share(0.5, bits, 64)
            cases = [make_case(n, m, keep, bits, 64, torch.bfloat16, "cuda", gen, x) for _ in range(copies)]
            for bk, bm, per_sm, warps in SETTINGS:
                key = f"rest {bits}-bit {bk},{bm},{per_sm},{warps}"
                try:
                    a = cases[0]
                    ref = reference(*a, bits, 64).double()
                    y = rest_gemv(*a, bits, 64, block_k=bk, block_m=bm, per_sm=per_sm, num_warps=warps).double()
                    row[key + " err"] = ((y - ref).norm() / ref.norm()).item()
                    # Every loop variable bound now: the graphs are captured after the loop.
                    calls[key] = [lambda a=a, b=bits, bk=bk, bm=bm, ps=per_sm, nw=warps: rest_gemv(
                        *a, b, 64, block_k=bk, block_m=bm, per_sm=ps, num_warps=nw) for a in cases]
                except Exception as e:  # a setting that fails to build is a data point too
                    row[key] = repr(e)[:200]
        times = B.alternating_us(calls, copies, reps, 3)
        for key, ts in times.items():
            row[key] = round(sorted(ts)[1], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del dense_w, shipped, cases
        torch.cuda.empty_cache()
    (out_dir / "lowbit_rest_gemv.json").write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                                               "torch": torch.__version__, "triton": triton.__version__,
                                                               "rows": rows}, indent=1))


# block_k, block_m, programs per SM, warps; sm_90 builds (Triton 3.6): 96 registers at 4 warps (5 programs fit), 108-110 at
# 8 warps (2 fit), 168-254 at 16 rows (2 fit)
SETTINGS = [(8, 512, 4, 4), (8, 512, 5, 4), (8, 1024, 2, 8), (16, 512, 2, 4), (4, 1024, 4, 4)]


def aot_report() -> None:
    """Build the kernel for sm_90 (bf16, both bit widths, every timing setting) and print registers and local
    memory from the cubin, as tools/aot_check_splitk.py does: more than 128 registers at 4 warps cost programs."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = _rest_gemv_kernel.arg_names
    types = {"x_ptr": "*bf16", "c_ptr": "*fp32", "tau_ptr": "*fp32", "w_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*fp16",
             "lo_ptr": "*fp16", "ws_ptr": "*fp32", "tcnt_ptr": "*i32", "out_ptr": "*bf16"}
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    for bits in (4, 2):
        for bk, bm, per_sm, warps in SETTINGS:
            const = {"BITS": bits, "GROUP": 64, "BLOCK_K": bk, "BLOCK_M": bm, "PDL": True}
            sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in names}
            attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names)
                     if a in types or a in ("n", "m", "stride_w", "stride_q", "stride_s")}
            src = ASTSource(_rest_gemv_kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()},
                            attrs=attrs)
            try:
                k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 1})
                with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                    f.write(k.asm["cubin"])
                out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
                usage = re.findall(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
                report = "registers {} stack {} shared {} local {}".format(*usage[0]) if usage else out[-200:]
            except Exception as e:  # a setting that does not build is the finding
                report = f"FAILED {e!r}"[:300]
            print(f"{bits}-bit {bk},{bm},{per_sm}/SM,{warps} warps: {report}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="correctness only (CPU under TRITON_INTERPRET=1, or GPU)")
    p.add_argument("--aot", action="store_true", help="build for sm_90 without a GPU and print registers")
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    if a.aot:
        aot_report()
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = check(device)
    if a.check or device == "cpu":
        return
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "lowbit_rest_gemv_check.json").write_text(json.dumps(rows))
    timing(a.out, a.reps)


if __name__ == "__main__":
    main()
