"""What the split-K epilogue costs: one fp32 atomic per output element per program, then the tile counter.

Every one-token launch of rsparse ends the same way: each of its ~528 programs adds its partial sums
(``BLOCK_M`` fp32 values) to a workspace with ``tl.atomic_add`` (one scalar ``red`` per element),
counts itself on its tile's counter, and the last program of a tile writes the output. This script
times that epilogue alone, with no weight loads, under CUDA-graph replay (median µs per launch of
20 launches in a graph), in the grids of the real launches:

* ``atomic``: ``tl.atomic_add`` as the kernels do it;
* ``store``: plain stores of the partials (wrong sums; the floor without a reduction);
* ``none``: no partials written (launch, counter and last-program write only).

Each variant that reduces is checked: the workspace sums must equal the fp64 sums.

    python benchmarks/atomics_cost.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import graph_time_us  # noqa: E402

LAUNCHES = 20  # per CUDA graph

@triton.jit
def _epilogue(ws_ptr, cnt_ptr, out_ptr, tiles, chunks, MODE: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0)
    tile = pid % tiles
    offs = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    part = ((offs % 97) + (pid % 13)).to(tl.float32) * 0.25  # exact in fp32 in any order
    if MODE == 0:
        tl.atomic_add(ws_ptr + offs, part, sem="relaxed")
    elif MODE == 2:
        tl.store(ws_ptr + offs, part)
    tl.debug_barrier()
    done = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
    if done == chunks - 1:
        y = tl.load(ws_ptr + offs, volatile=True)
        tl.store(out_ptr + offs, y)
        tl.store(ws_ptr + offs, tl.zeros_like(y))
        tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    grids = {  # name: (outputs m, BLOCK_M, programs per SM, warps): the launches of a decode step
        "o / down (m 4096, 1024 cols, 4/SM)": (4096, 1024, 4, 4),
        "q/k/v fused (m 6144, 1024 cols, 4/SM)": (6144, 1024, 4, 4),
        "gate+up gather (m 28672, 512 cols, 8/SM)": (28672, 512, 8, 2),
        # o's shape with narrower tiles: as many programs, fewer partial sums each
        "m 4096, 512 cols, 4/SM": (4096, 512, 4, 4),
        "m 4096, 256 cols, 4/SM": (4096, 256, 4, 4),
        "m 4096, 128 cols, 4/SM": (4096, 128, 4, 4),
    }
    rows = []
    for name, (m, block_m, per_sm, warps) in grids.items():
        tiles = triton.cdiv(m, block_m)
        chunks = max(1, sms * per_sm // tiles)
        grid = (tiles * chunks,)
        ws = torch.zeros(tiles * block_m, device=dev)
        cnt = torch.zeros(tiles, device=dev, dtype=torch.int32)
        out = torch.zeros_like(ws)
        offs = torch.arange(tiles * block_m, device=dev, dtype=torch.float64)
        pids = torch.arange(grid[0], device=dev, dtype=torch.float64)
        tile_of = (torch.arange(grid[0], device=dev) % tiles)
        want = torch.zeros_like(offs)
        for t in range(tiles):  # the fp64 sums every reducing variant must give
            sel = pids[tile_of == t]
            o = offs[t * block_m:(t + 1) * block_m]
            want[t * block_m:(t + 1) * block_m] = ((o % 97)[None, :] + (sel % 13)[:, None]).sum(0) * 0.25
        row = {"grid": name, "programs": grid[0], "tiles": tiles, "atomics_per_launch": grid[0] * block_m}
        for vname, mode in (("atomic", 0), ("store", 2), ("none", 3)):
            try:
                launch = lambda: _epilogue[grid](ws, cnt, out, tiles, chunks, MODE=mode, BLOCK_M=block_m,  # noqa: E731
                                                 num_warps=warps)
                out.zero_()
                launch()
                torch.cuda.synchronize()
                if mode == 0:
                    err = (out.double() - want).abs().max().item()
                    row[f"{vname} max_abs_err"] = err
                row[vname] = round(graph_time_us([launch] * LAUNCHES, args.reps), 2)
            except Exception as e:
                row[vname] = f"failed: {type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "atomics_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    sys.exit(main())
