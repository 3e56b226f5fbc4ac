"""End-to-end decode speed: dense vs rsparse, with the harness of `rsparse.bench.decode_speed`.

Protocol: a Llama-3-8B-shaped model (hidden 4096, intermediate 14336, 32 layers, 32 heads,
8 KV heads, vocab 128256) with random bf16 weights on the GPU (speed does not depend on weight
values, DESIGN.md §8), another published shape (``--shape mistral-7b`` or ``qwen2.5-7b``), or any
local model (``--model PATH``). Each sparse variant is a copy of
the dense model sparsified by ``rsparse.sparsify(model, target, calibration=<4×384 random
tokens>)``, i.e. thresholds calibrated through the real pipeline so that the decode steps read
the real number of weight rows; the kept fraction measured on the decode steps of the shortest prompt's row
is reported. The calibration sequences span the positions that row's decode visits (128 + 256): on this random
model the inputs' scale depends on the position, and decode run 38 found that 4×64 calibration tokens leave
the decode steps at positions 128-383 reading 0.282 of the rows at target 0.7 (0.476 at 0.5), i.e. a sparser
model than the target, while 4×384 reads 0.302 (0.497). Runs up to 37 used 4×64 and measured the kept
fraction at positions 32-36 only (0.306).
Backend forced to ``"triton"`` for every sparse variant. Layers that read the same input (q/k/v,
gate/up) share one fused launch per decode step (`rsparse.fuse`) unless ``--no-fuse``.
"0 (kernel)" is target 0 with the budgets hidden, so that every layer runs the sparse kernel
with every channel active instead of the dense GEMM it dispatches to by design.

Each row: greedy decoding of ``--new-tokens`` tokens after a random prompt (eager dense prefill,
static KV cache), decode steps eager or compiled (inductor, full graph, CUDA graphs), median
ms per token over ``--repeats`` runs after one warm-up run, all in one process. Peak memory:
``peak_model_mb`` = this model's parameters and buffers + the most memory allocated above what
was allocated when the row started (other variants stay resident and are subtracted).

    python benchmarks/decode.py --out benchmarks/results          # the whole grid, by priority
    python benchmarks/decode.py --render benchmarks/results/decode.json   # table + plot, no GPU
    python benchmarks/decode.py --targets 0.7 --batches 1 --prompts 128 --modes compiled --profile  # + kernel means
    python benchmarks/decode.py --prompts 2048 --calibration 4x2304   # long prompts: calibrate over their positions (run 39)

``--attn`` sets transformers' attention for dense and sparse alike (default ``split-key``,
`rsparse.bench.split_key_attention`, since run 45: the dense step takes 3.6 % less time than with ``sdpa-packed`` in the
same process, so it is the stronger baseline; runs up to 44 used ``sdpa``; run 22 in NOTES compares the others;
``sdpa-packed``, `rsparse.bench.packed_sdpa_attention`, run 44).
``--skip-module-guards`` compiles both without guards on the modules (`rsparse.bench.compile_decode_step`): the sparse
step's host time is mostly those guards (run 23); on the GPU skipping them moved the rows by under 1 % (run 24).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
)
# Other published shapes (from the models' config.json files), built with their own transformers
# class: the same harness on another vocabulary size, q/k/v bias, or intermediate width.
SHAPES = {
    "llama3-8b": ("LlamaConfig", "Llama-3-8B", LLAMA3_8B),
    "mistral-7b": ("MistralConfig", "Mistral-7B-v0.3", dict(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1000000.0,
        sliding_window=None)),
    "qwen2.5-7b": ("Qwen2Config", "Qwen2.5-7B", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0,
        tie_word_embeddings=False)),
}
SEED = 0


def build_dense(args) -> torch.nn.Module:
    import transformers as tf

    if args.model:
        model = tf.AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.bfloat16, device_map="cuda", attn_implementation=attn_implementation(args.attn))
        return model.eval()
    config_class, _, preset = SHAPES[args.shape]
    shape = dict(preset)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    if args.tiny:  # a CPU smoke test of this script
        shape.update(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(SEED)
    with torch.device(args.device):
        model = tf.AutoModelForCausalLM.from_config(
            getattr(tf, config_class)(**shape), dtype=args.dtype, attn_implementation=attn_implementation(args.attn))
    return model.eval()


ATTENTION = ("sdpa", "sdpa-packed", "split-key", "sdpa-no-cudnn", "eager", "flex_attention")


def attn_implementation(choice: str) -> str:
    """transformers' ``attn_implementation`` for ``--attn``; ``sdpa-no-cudnn`` is SDPA with PyTorch's cuDNN
    attention backend switched off for the whole process (SDPA then picks its memory-efficient kernel);
    ``sdpa-packed`` is SDPA with a decode token's grouped query heads packed onto their key/value head
    instead of K and V copied to every query head (`rsparse.bench.packed_sdpa_attention`); ``split-key`` packs
    the same way and computes a decode token's attention with the keys cut into ranges over many programs
    of a Triton kernel (`rsparse.bench.split_key_attention`)."""
    if choice == "sdpa-packed":
        from rsparse.bench import register_packed_attention

        return register_packed_attention()
    if choice == "split-key":
        from rsparse.bench import register_split_key_attention

        return register_split_key_attention()
    if choice == "sdpa-no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
        return "sdpa"
    return choice


def parse_calibration(text: str) -> tuple[int, int]:
    """``"4x64"`` -> (4 sequences, 64 tokens each)."""
    n, _, length = text.lower().partition("x")
    if not (n.isdigit() and length.isdigit() and int(n) > 0 and int(length) > 0):
        raise ValueError(f"--calibration must be SEQUENCESxTOKENS such as 4x64, got {text!r}")
    return int(n), int(length)


DEFAULT_CALIBRATION = "4x384"  # sequences x tokens: the positions of a 128-token prompt's 256 decode steps


def sparsify_copy(dense, target: float, device, fuse: bool = True, calibration: str = DEFAULT_CALIBRATION,
                  rho: float = 1.0, factor_bits: int = 4) -> tuple[torch.nn.Module, float]:
    import rsparse
    from rsparse.fuse import set_fusion

    model = copy.deepcopy(dense)
    vocab = model.config.get_text_config().vocab_size
    calib = torch.randint(0, vocab, parse_calibration(calibration), generator=torch.Generator().manual_seed(SEED + 1)).to(device)
    _sync(device)
    t0 = time.perf_counter()
    # Uniform: every layer at the target, ``rho`` of its bytes on channels (1: no low-rank path).
    rsparse.sparsify(model, target, calibration=calib, search="none", rho=rho, show_progress=False,
                     config=rsparse.RSparseConfig(factor_bits=factor_bits))
    set_fusion(model, fuse)
    _sync(device)
    return model, time.perf_counter() - t0


def kept_fraction(model, device, prompt_len: int = 32, new_tokens: int = 5) -> float:
    """Weight-count-weighted mean kept fraction of the sparse linears over the one-token eager decode
    steps after a random prompt of ``prompt_len`` tokens (``new_tokens - 1`` steps)."""
    from rsparse.bench import decode_tokens
    from rsparse.nn import rsparse_modules
    from rsparse.ops import active_mask

    sums, hooks = {}, []

    def hook(mod, inputs):
        x = inputs[0].reshape(-1, mod.in_features)
        if x.shape[0] == 1 and mod.uses_sparse_path(inputs[0]):  # decode steps only, not a sparse prefill
            sums.setdefault(mod, []).append(active_mask(x, mod.c, mod.tau).float().mean())

    for m in rsparse_modules(model).values():
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        vocab = model.config.get_text_config().vocab_size
        prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(SEED + 2)).to(device)
        decode_tokens(model, prompt, new_tokens)
    finally:
        for h in hooks:
            h.remove()
    num = sum(torch.stack(v).mean().item() * m.in_features * m.out_features for m, v in sums.items())
    den = sum(m.in_features * m.out_features for m in sums)
    return num / den


def force_kernel(model, on: bool) -> None:
    """Hide (or restore) the budgets so that layers keeping every channel still run the sparse kernel."""
    from rsparse.nn import rsparse_modules

    for m in rsparse_modules(model).values():
        if on:
            m._hidden_budget, m.budget = m.budget, None
        elif hasattr(m, "_hidden_budget"):
            m.budget = m._hidden_budget
            del m._hidden_budget


def grid(args) -> list[tuple[bool, int, int]]:
    """(compiled, batch, prompt) in priority order: compiled b1 p128, b4 p128, eager, long prompts."""
    order = []
    for compiled in (True, False):
        for prompt in args.prompts:
            for batch in args.batches:
                order.append((compiled, batch, prompt))
    order.sort(key=lambda c: (c[2] != args.prompts[0], not c[0], c[1]))
    return [c for c in order if ("compiled" if c[0] else "eager") in args.modes]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    torch._dynamo.reset()  # also drops CUDA-graph pools of earlier rows
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(args) -> None:
    import rsparse
    import transformers
    import triton
    from rsparse.bench import decode_speed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "decode.jsonl"
    started = time.perf_counter()
    meta = {
        "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
        "model": args.model or (f"{SHAPES[args.shape][1]} shape" + (" at tiny widths" if args.tiny else "") + ", random weights"
                                + (f", {args.layers} layers" if args.layers else "")),
        "dtype": str(args.dtype).replace("torch.", ""), "new_tokens": args.new_tokens, "repeats": args.repeats,
        "seed": SEED, "calibration": f"{args.calibration} random tokens", "rho": args.rho,
        "factor_bits": args.factor_bits if args.rho < 1 else None,
        "kept_fraction_steps": f"{args.kept_steps} eager decode steps after a {min(args.prompts)}-token random prompt", "backend_sparse": "triton",
        "fused_shared_input": args.fuse, "eager_graphs": args.eager_graphs, "attention": args.attn,
        "skip_module_guards": args.skip_module_guards, "pdl": args.pdl,
        "dot_tiles": args.dot_tiles or "shipped",
    }
    from rsparse.kernels import compact_gemv, sparse_linear
    compact_gemv.LAUNCH_PDL = args.pdl
    if args.dot_tiles:  # every sparse launch of 2-16 tokens (the tensor-core split-K launch) takes these tiles
        bk, bm, per_sm, warps, stages = parse_dot_tiles(args.dot_tiles)
        sparse_linear.set_config(sparse_linear.Config(block_k=bk, block_m=bm, programs_per_sm=per_sm, num_warps=warps,
                                                      num_stages=stages), "dot")
    rsparse.eager_graphs.set_enabled(args.eager_graphs)
    print(json.dumps(meta), flush=True)
    with jsonl.open("a") as f:
        f.write(json.dumps({"meta": meta}) + "\n")

    t0 = time.perf_counter()
    dense = build_dense(args)
    _sync(args.device)
    print(f"dense model built in {time.perf_counter() - t0:.1f}s", flush=True)
    variants = {"dense": (dense, None)}
    info = {}
    for target in args.targets:
        model, secs = sparsify_copy(dense, target, args.device, args.fuse, args.calibration, args.rho, args.factor_bits)
        variants[f"{target:g}"] = (model, target)
        kept = kept_fraction(model, args.device, min(args.prompts), args.kept_steps + 1)
        info[f"{target:g}"] = {"sparsify_s": secs, "kept_fraction_decode": kept}
        print(f"target {target:g}: sparsify {secs:.1f}s, decode kept fraction {info[f'{target:g}']['kept_fraction_decode']:.3f}", flush=True)
    if 0.0 in args.targets and args.kernel_at_zero:
        variants["0 (kernel)"] = variants["0"]
        info["0 (kernel)"] = {"kept_fraction_decode": 1.0}
    names = list(variants)
    # Within a setting: dense first, then the acceptance targets, then the rest.
    priority = ["dense", "0.5", "0.7", "0", "0.4", "0 (kernel)"]
    names.sort(key=lambda n: priority.index(n) if n in priority else len(priority))

    est: dict[tuple, float] = {}
    for compiled, batch, prompt in grid(args):
        for name in names:
            model, target = variants[name]
            key = (compiled, batch, prompt)
            guess = est.get(key, args.first_row_s if compiled else 40.0)
            if time.perf_counter() - started + guess > args.time_limit:
                print(f"skip {name} {key}: time limit", flush=True)
                continue
            rsparse.set_backend("triton" if target is not None and args.device == "cuda" else "auto")
            force_kernel(model, name == "0 (kernel)")
            _free()
            base = torch.cuda.memory_allocated() if args.device == "cuda" else 0
            t_row = time.perf_counter()
            try:
                with _row_profiler(args) as prof:
                    r = decode_speed(model, batch_size=batch, prompt_len=prompt, new_tokens=args.new_tokens,
                                     compile=compiled, repeats=args.repeats if compiled else args.eager_repeats, seed=SEED,
                                     skip_module_guards=args.skip_module_guards)
                if prof is not None:
                    r["kernels"] = kernel_table(prof)
            except Exception as e:  # keep the rows that worked
                r = {"error": f"{type(e).__name__}: {e}"[:500]}
            finally:
                force_kernel(model, False)
                rsparse.set_backend("auto")
            row_s = time.perf_counter() - t_row
            est[key] = max(est.get(key, 0.0) * 0.5, row_s * 1.1) if name != "dense" else row_s
            row = {"variant": name, "target": target, "compiled": compiled, "batch_size": batch, "prompt_len": prompt,
                   "row_s": row_s, **info.get(name, {}), **r}
            if r.get("peak_memory_mb") is not None:
                row["peak_model_mb"] = r["peak_memory_mb"] - base / 2**20 + r["model_memory_mb"]
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(_row_line(row), flush=True)
    rows = _read(jsonl)[1]
    (out / "decode.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    render(out / "decode.json")
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


def _row_profiler(args):
    """``--profile``: a profiler around the whole row (warm-up, prefills and timed runs), else nothing."""
    if not args.profile:
        return contextlib.nullcontext()
    activity = torch.profiler.ProfilerActivity.CUDA if args.device == "cuda" else torch.profiler.ProfilerActivity.CPU
    return torch.profiler.profile(activities=[activity])


def kernel_table(prof, top: int = 40) -> list[dict]:
    """The row's kernels (CPU ops on the CPU) by total time: name, calls and mean µs per call. Means over the
    whole row, warm-up included: enough to tell which launch differs between two processes of the same row."""
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0) or e.cpu_time_total
        if e.count:
            rows.append({"name": e.key[:120], "calls": e.count, "mean_us": total / e.count, "total_ms": total / 1e3})
    return sorted(rows, key=lambda r: -r["total_ms"])[:top]


def _row_line(row) -> str:
    if "error" in row:
        return f"{row['variant']:>10} c={row['compiled']} b={row['batch_size']} p={row['prompt_len']}: {row['error']}"
    return (f"{row['variant']:>10} c={int(row['compiled'])} b={row['batch_size']} p={row['prompt_len']}: "
            f"{row['ms_per_token']:.3f} ms/tok ({row['tokens_per_s']:.1f} tok/s) peak {row.get('peak_model_mb') or 0:.0f} MB "
            f"graphs {row['graphs_compiled']} breaks {row['graph_breaks']} [{row['row_s']:.0f}s]")


def _read(path: Path):
    meta, rows = {}, []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if "meta" in d:
            meta = d["meta"]
        else:
            rows.append(d)
    return meta, rows


def render(path: Path) -> None:
    """Markdown table (speed-up over dense in the same setting) and a plot, next to the JSON."""
    path = Path(path)
    if path.suffix == ".jsonl":
        meta, rows = _read(path)
    else:
        d = json.loads(path.read_text())
        meta, rows = d["meta"], d["rows"]
    rows = [r for r in rows if "error" not in r]
    dense = {(r["compiled"], r["batch_size"], r["prompt_len"]): r for r in rows if r["variant"] == "dense"}
    lines = [
        f"# Decode speed, dense vs rsparse ({meta.get('device')}, {meta.get('dtype')})", "",
        f"{meta.get('model')}; torch {meta.get('torch')}, Triton {meta.get('triton')}, transformers "
        f"{meta.get('transformers')}; attention {meta.get('attention', 'sdpa')}; {meta.get('new_tokens')} new tokens, "
        f"median of {meta.get('repeats')} runs "
        f"(eager rows: fewer, see JSON), seed {meta.get('seed')}, {meta.get('date')}. Speed-up = dense ms/token "
        "over this row's, same setting. Peak = model + decode-time allocations (MB).", "",
        "| mode | batch | prompt | variant | kept | ms/token | tokens/s | speed-up | peak MB | peak vs dense | graphs/breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = (r["compiled"], r["batch_size"], r["prompt_len"])
        d = dense.get(key)
        speed = f"{d['ms_per_token'] / r['ms_per_token']:.2f}×" if d else "—"
        peak = r.get("peak_model_mb")
        vs = f"{peak / d['peak_model_mb']:.4f}" if d and peak and d.get("peak_model_mb") else "—"
        kept = r.get("kept_fraction_decode")
        lines.append(
            f"| {'compiled' if r['compiled'] else 'eager'} | {r['batch_size']} | {r['prompt_len']} | {r['variant']} | "
            f"{'1' if kept is None else f'{kept:.3f}'} | {r['ms_per_token']:.3f} | {r['tokens_per_s']:.1f} | {speed} | "
            f"{'—' if peak is None else f'{peak:.0f}'} | {vs} | "
            f"{'—' if r['graphs_compiled'] is None else str(r['graphs_compiled']) + '/' + str(r['graph_breaks'])} |"
        )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    settings = [k for k in dense]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(settings)), 4))
    variants = [v for v in ["0", "0 (kernel)", "0.4", "0.5", "0.7"] if any(r["variant"] == v for r in rows)]
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs, ys = [], []
        for j, key in enumerate(settings):
            match = [r for r in rows if r["variant"] == v and (r["compiled"], r["batch_size"], r["prompt_len"]) == key]
            if match:
                xs.append(j + (i - (len(variants) - 1) / 2) * width)
                ys.append(dense[key]["ms_per_token"] / match[0]["ms_per_token"])
        ax.bar(xs, ys, width, label=f"target {v}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([f"{'compiled' if c else 'eager'}\nb{b} p{p}" for c, b, p in settings])
    ax.set_ylabel("speed-up over dense (tokens/s)")
    ax.set_title(f"rsparse decode, {meta.get('device')}, {meta.get('dtype')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)


def parse_dot_tiles(text: str) -> tuple[int, ...]:
    """``"BK,BM,PER_SM,WARPS,STAGES"`` -> five positive ints (``ValueError`` naming what was given)."""
    parts = text.split(",")
    if len(parts) != 5 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--dot-tiles expects five positive integers BK,BM,PER_SM,WARPS,STAGES, got {text!r}")
    return tuple(int(p) for p in parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", help="a local model folder instead of the random Llama-3-8B shape")
    p.add_argument("--shape", default="llama3-8b", choices=list(SHAPES), help="random-weight model shape (default: Llama-3-8B)")
    p.add_argument("--layers", type=int, help="fewer decoder layers (quick checks)")
    p.add_argument("--tiny", action="store_true", help="tiny widths on the CPU: a smoke test of this script")
    p.add_argument("--targets", type=float, nargs="+", default=[0.0, 0.4, 0.5, 0.7])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--prompts", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--modes", nargs="+", default=["compiled", "eager"], choices=["compiled", "eager"])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eager-repeats", type=int, default=2)
    p.add_argument("--no-kernel-at-zero", dest="kernel_at_zero", action="store_false")
    p.add_argument("--no-eager-graphs", dest="eager_graphs", action="store_false",
                   help="eager rows: run every sparse call uncaptured (rsparse.eager_graphs off)")
    p.add_argument("--profile", action="store_true",
                   help="profile each row and store its kernels' mean times in the row (slows the row a little)")
    p.add_argument("--attn", default="split-key", choices=ATTENTION,
                   help="attention of dense and sparse models alike (transformers' attn_implementation; default split-key, "
                        "which eager rows run as the packed SDPA: rsparse.bench.SPLIT_KEY_IN_EAGER)")
    p.add_argument("--skip-module-guards", action="store_true",
                   help="compiled rows, dense and sparse alike: no dynamo guards on the modules (host time per step; NOTES run 23)")
    p.add_argument("--no-pdl", dest="pdl", action="store_false",
                   help="launch the sparse kernels without programmatic dependent launch (compact_gemv.LAUNCH_PDL)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="one launch per layer instead of one per shared-input group (q/k/v, gate/up)")
    p.add_argument("--dot-tiles", metavar="BK,BM,PER_SM,WARPS,STAGES",
                   help="force these tiles on every sparse launch of 2-16 tokens (sparse_linear.set_config(..., 'dot')), "
                        "e.g. 16,512,3,4,3; default: choose_config's rule (32,256,3,4,3 on layers expected to keep "
                        ">= 40 %% of their channels without a rank, else 16,512,3,4,3; NOTES, twenty-seventh session)")
    p.add_argument("--time-limit", type=float, default=1e9, help="start no row that would end after this many s")
    p.add_argument("--first-row-s", type=float, default=90.0, help="guess for a compiled row's time before one ran")
    p.add_argument("--rho", type=float, default=1.0,
                   help="every layer's share of bytes on channels (default 1: no low-rank path; 0.8: a fifth on it)")
    p.add_argument("--factor-bits", type=int, default=4, choices=[4, 16],
                   help="bits per stored low-rank factor value with --rho below 1 (default 4, the library's default)")
    p.add_argument("--calibration", default=DEFAULT_CALIBRATION,
                   help="calibration sequences x tokens (random token ids); the default spans a 128-token prompt's decode")
    p.add_argument("--kept-steps", type=int,
                   help="eager decode steps after the shortest prompt over which the kept fraction is measured "
                        "(default: all of that row's, new tokens - 1)")
    p.add_argument("--render", help="only write the table and plot of this decode.json / decode.jsonl")
    args = p.parse_args()
    parse_calibration(args.calibration)  # a malformed value fails before any model is built
    if args.dot_tiles:
        parse_dot_tiles(args.dot_tiles)
    if args.kept_steps is None:
        args.kept_steps = args.new_tokens - 1
    if args.render:
        render(Path(args.render))
        return
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("no GPU: pass --tiny for a CPU smoke test")
    run(args)


if __name__ == "__main__":
    main()
