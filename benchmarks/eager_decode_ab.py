"""Eager decode with the whole MLP replayed as one CUDA graph, against layer by layer and dense (A/B).

Eager decoding is bound by host time, and the host's speed moves by up to 20 % between processes
and by a few % within one (benchmarks/NOTES.md, decode run 16), so this compares the variants in one
process, interleaved round by round: the dense model; rsparse with every gated SiLU MLP replayed as
one graph (`rsparse.fuse_silu`, the default since the seventh session of 2026-12-01); and rsparse with
the gate/up launch and the down launch replayed as two graphs (before). Greedy decoding with a static
cache (`rsparse.bench.decode_speed`, eager steps, CUDA events), Llama-3-8B shape with random weights,
uniform budgets (as `benchmarks/decode.py`). It also compares the greedy tokens of the two rsparse
variants, next to two runs of each (the kernels' fp32 atomics make runs differ in the last bit).

    PYTHONPATH=$PWD/src python3 benchmarks/eager_decode_ab.py --out results/eager_decode_ab.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode  # noqa: E402  (this folder's decode benchmark: the same model and budgets)

import rsparse  # noqa: E402
import rsparse.fuse_silu  # noqa: E402
from rsparse.bench import decode_speed, decode_tokens  # noqa: E402


@contextlib.contextmanager
def layer_by_layer():
    """The MLP's two launches replayed as two graphs (no whole-MLP graph)."""
    old = rsparse.fuse_silu._whole_mlp_launches
    rsparse.fuse_silu._whole_mlp_launches = lambda mlp, x: None
    rsparse.eager_graphs.invalidate()
    try:
        yield
    finally:
        rsparse.fuse_silu._whole_mlp_launches = old
        rsparse.eager_graphs.invalidate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--out", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny widths on the CPU: a smoke test of this script")
    a = p.parse_args()
    device = "cpu" if a.tiny else "cuda"
    kernels = "auto" if a.tiny else "triton"
    args = argparse.Namespace(model=None, shape="llama3-8b", layers=2 if a.tiny else None, tiny=a.tiny, device=device,
                              dtype=torch.float32 if a.tiny else torch.bfloat16)
    dense = decode.build_dense(args)
    models = {"dense": dense}
    for t in a.targets:
        models[f"{t:g}"] = decode.sparsify_copy(dense, t, device)[0]
    variants = [("dense", "dense", False)]
    for t in a.targets:
        variants += [(f"{t:g}, whole-MLP graph", f"{t:g}", False), (f"{t:g}, layer-by-layer graphs", f"{t:g}", True)]

    def timed(name, key, split):
        rsparse.set_backend("auto" if key == "dense" else kernels)
        with layer_by_layer() if split else contextlib.nullcontext():
            r = decode_speed(models[key], batch_size=1, prompt_len=a.prompt, new_tokens=a.new_tokens, repeats=1)
        rsparse.set_backend("auto")
        return r["ms_per_token"]

    runs = {name: [] for name, _, _ in variants}
    for rnd in range(a.rounds):
        order = variants if rnd % 2 == 0 else variants[::-1]
        for name, key, split in order:
            runs[name].append(timed(name, key, split))
        print(f"round {rnd}: " + ", ".join(f"{n} {runs[n][-1]:.2f}" for n in runs), flush=True)

    # Tokens: the kernels add split-K partial sums with fp32 atomics, so their sums (and bf16 outputs)
    # may differ in the last bit from run to run, and greedy tokens of a random-weight model diverge
    # at some point even between two runs of one variant. So each pair's first differing position is
    # reported next to the same-variant pairs (-1: all 32 tokens equal).
    def first_difference(a, b):
        diff = (a != b).flatten().nonzero()
        return int(diff[0]) if len(diff) else -1

    same = {}
    prompt = torch.randint(0, 500, (1, a.prompt), generator=torch.Generator().manual_seed(3)).to(device)
    rsparse.set_backend(kernels)
    for t in a.targets:
        with torch.no_grad():
            whole = [decode_tokens(models[f"{t:g}"], prompt, 32) for _ in range(2)]
            with layer_by_layer():
                split = [decode_tokens(models[f"{t:g}"], prompt, 32) for _ in range(2)]
        same[f"{t:g}"] = {"whole vs layer-by-layer": first_difference(whole[0], split[0]),
                          "whole vs whole": first_difference(whole[0], whole[1]),
                          "layer-by-layer vs layer-by-layer": first_difference(split[0], split[1])}
    rsparse.set_backend("auto")

    dense_ms = statistics.median(runs["dense"])
    rows = {}
    for name, ms in runs.items():
        med = statistics.median(ms)
        paired = statistics.median(d / s for d, s in zip(runs["dense"], ms))
        rows[name] = {"ms_per_token_median": med, "ms_per_token_runs": ms, "speedup_vs_dense": dense_ms / med,
                      "speedup_vs_dense_paired_median": paired}
        print(f"{name:32s} {med:7.3f} ms/token  {dense_ms / med:5.3f}x dense (paired median {paired:5.3f}x)", flush=True)
    print("first differing greedy token of 32 (-1: none):", same, flush=True)
    import transformers
    import triton

    meta = {"device": "cpu" if a.tiny else torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "model": "Llama-3-8B shape, random weights, bf16, uniform budgets",
            "batch": 1, "prompt": a.prompt, "new_tokens": a.new_tokens, "rounds": a.rounds,
            "what": "eager decode ms/token (static cache, CUDA events), variants interleaved round by round"}
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "same_tokens": same}, f, indent=1)


if __name__ == "__main__":
    main()
