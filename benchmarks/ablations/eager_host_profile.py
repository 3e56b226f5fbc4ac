"""Where an eager decode step's host time goes: the dense model against rsparse, under cProfile.

Eager decoding (no `torch.compile`) is bound by host time. Decode run 41 read rsparse at 0.82-0.86x of dense
eager on an H200 host that ran dense eager steps at 22.5 ms. This runs the same harness as `decode.py`'s eager rows
(`rsparse.bench.decode_speed`, static cache, eager steps; Llama-3-8B shape with random weights, uniform budgets),
first unprofiled (ms per token), then once more under cProfile, and prints each model's functions by own time and by
cumulative time, per decoded token. ``--layers`` keeps fewer decoder layers: host time per layer is what differs.

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/eager_host_profile.py --layers 8 --out $OUT/eager_host.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from decode import SEED, build_dense, sparsify_copy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny widths on the CPU: a smoke test of this script")
    args = p.parse_args()
    args.model, args.device, args.dtype, args.shape, args.attn = (
        None, "cpu" if args.tiny else "cuda", torch.float32 if args.tiny else torch.bfloat16, "llama3-8b", "sdpa")
    import rsparse
    from rsparse.bench import decode_speed

    dense = build_dense(args)
    sparse, _ = sparsify_copy(dense, args.target, args.device)
    kw = dict(batch_size=1, prompt_len=128, new_tokens=args.new_tokens, compile=False, repeats=1, seed=SEED)
    lines = []
    for name, model in (("dense", dense), (f"{args.target:g}", sparse)):
        rsparse.set_backend("triton" if name != "dense" and args.device == "cuda" else "auto")
        decode_speed(model, **kw)  # warm-up: kernels compiled, eager graphs captured
        ms = decode_speed(model, **{**kw, "repeats": 3})["ms_per_token"]
        prof = cProfile.Profile()
        prof.enable()
        decode_speed(model, **kw)
        prof.disable()
        lines.append(f"## {name}: {ms:.3f} ms per token unprofiled ({args.layers} layers)")
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
            lines.append(f"### by {key} (whole call: prefill plus {args.new_tokens - 1} steps)\n" + buf.getvalue())
        rsparse.set_backend("auto")
        print(lines[-3], flush=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
