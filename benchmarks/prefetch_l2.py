"""Does warming L2 with o_proj's weight during attention make o_proj faster? (`rsparse.kernels.l2_prefetch`)

One Llama-3-8B attention block's linears at batch 1, bf16, rho 1, random weights (seed 0) with
tau calibrated to the sparsity as in `benchmarks/kernels.py`: the fused q/k/v launch, then a
spin kernel of ``--window`` µs standing in for RoPE, the cache writes and attention, then o_proj.
Each sequence is timed as the median over CUDA-graph replays of a graph that runs it on several
weight copies in turn (several times L2, so every copy starts cold), with the q/k/v launch
prefetching o_proj's weight ("on") or not ("off"), in the same process. Rows: the whole sequence,
the q/k/v launch alone (what the prefetch costs it), and the spin kernel alone; o_proj's time is
sequence − q/k/v − window. Each q/k/v output is also checked against the PyTorch reference.

    python benchmarks/prefetch_l2.py --out $OUT          # sparsity 0.5 and 0.7, windows 0, 6, 14 µs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kernels import L2_BYTES, build_layer, graph_time_us  # noqa: E402


def spin_cycles_per_us(reps: int) -> float:
    """Cycles of `torch.cuda._sleep` per µs, measured under graph replay."""
    cycles = 200_000
    return cycles / graph_time_us([lambda: torch.cuda._sleep(cycles)], reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--windows", type=float, nargs="+", default=[0.0, 6.0, 14.0])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    from rsparse.kernels import l2_prefetch
    from rsparse.ops import sparse_linear_reference

    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 4096, device=dev, dtype=dtype, generator=gen)
    layer_bytes = 4096 * (6144 + 4096) * 2
    copies = max(2, math.ceil(3 * L2_BYTES / layer_bytes))
    rows = []
    per_us = spin_cycles_per_us(args.reps)

    def o_call(o, a, s):
        return torch.ops.rsparse.sparse_linear(a, *o._op_tensors(), 1 - s)

    for s in args.sparsities:
        blocks = []
        for _ in range(copies):
            qkv = [build_layer(4096, m, s, 1.0, x, dtype, dev, gen)[0] for m in (4096, 1024, 1024)]
            o = build_layer(4096, 4096, s, 1.0, x, dtype, dev, gen)[0]
            blocks.append((qkv, o))

        def qkv_call(qkv, o, prefetch):
            lists = [list(a) for a in zip(*[m._op_tensors() for m in qkv])]
            return torch.ops.rsparse.sparse_linear_multi(x, *lists, 1 - s, o.weight_t if prefetch else None)


        errs = []
        for prefetch in (False, True):
            ys = qkv_call(*blocks[0], prefetch)
            for y, m in zip(ys, blocks[0][0]):
                ref = sparse_linear_reference(x, *m._op_tensors()).double()
                errs.append(((y.double() - ref).norm() / ref.norm()).item())
        a = x.clone()  # o_proj's input: a fixed tensor (its rows are chosen by its own tau)
        for window in args.windows:
            cycles = int(window * per_us)
            t_spin = graph_time_us([lambda: torch.cuda._sleep(cycles)] * copies, args.reps) if cycles else 0.0
            row = {"sparsity": s, "window_us_requested": window, "spin_us": round(t_spin, 2), "copies": copies,
                   "max_rel_err_qkv": max(errs)}
            for name, prefetch in (("off", False), ("on", True), ("off2", False), ("on2", True)):
                def seq(qkv, o, prefetch=prefetch):
                    def f():
                        qkv_call(qkv, o, prefetch)
                        if cycles:
                            torch.cuda._sleep(cycles)
                        o_call(o, a, s)
                    return f
                row[f"seq_{name}"] = round(graph_time_us([seq(*b) for b in blocks], args.reps), 2)
                if window == args.windows[0]:
                    row[f"qkv_{name}"] = round(graph_time_us([lambda b=b, pf=prefetch: qkv_call(*b, pf) for b in blocks], args.reps), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del blocks
        torch.cuda.empty_cache()
    t_o = {}
    for s in args.sparsities:
        blocks = [build_layer(4096, 4096, s, 1.0, x, dtype, dev, gen)[0] for _ in range(copies)]
        t_o[s] = round(graph_time_us([lambda o=o, s=s: o_call(o, x, s) for o in blocks], args.reps), 2)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "l2_bytes": l2_prefetch._l2_bytes(dev),
            "o_alone_cold_us": t_o, "spin_cycles_per_us": per_us, "max_l2_share": l2_prefetch.MAX_L2_SHARE}
    print(json.dumps(meta))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefetch_l2.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
