"""Where a compiled decode step spends its time: every GPU kernel of the step, dense vs rsparse.

Same model and harness as `benchmarks/decode.py` (Llama-3-8B shape, random bf16 weights,
static cache, ``torch.compile(fullgraph=True, mode="reduce-overhead")``, sparse variants
sparsified with uniform budgets and the Triton backend forced). After a warm-up, ``--steps``
decode steps run once under CUDA events (ms per token) and once under ``torch.profiler``; the
profiler's kernel records (CUPTI sees the kernels of a CUDA-graph replay) are grouped by name
and by kind (rsparse Triton kernels, cuBLAS GEMMs, attention, inductor's fused kernels, other)
into per-step sums. "busy" is the union of kernel intervals per step and "idle" the rest of the
step's span: the gaps between kernels that a smaller kernel count would save.

    python benchmarks/profile_decode.py --out $OUT            # dense, 0.5, 0.7
    python benchmarks/profile_decode.py --out $OUT --silu-ab  # and 0.5, 0.7 with the SiLU product unfused
    python benchmarks/profile_decode.py --out $OUT --norms-removed  # and a bound: 0.5, 0.7 with no decoder RMSNorm
    python benchmarks/profile_decode.py --out $OUT --adds-removed   # and one with neither norms nor residual adds
    python benchmarks/profile_decode.py --out $OUT --fold-ab        # and 0.5, 0.7 with rsparse.fuse_norm off
    TORCH_LOGS=output_code python benchmarks/profile_decode.py --out $OUT --targets 0.7 2> $OUT/output_code.log
        # and inductor's generated code, to read what each of its kernels (full names in the JSON) computes
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from decode import ATTENTION, SEED, build_dense, sparsify_copy  # noqa: E402

KINDS = [  # (kind, substrings of the kernel name), first match wins
    ("rsparse", ("_splitk_kernel", "_gather_kernel", "_inline_kernel", "_compact_kernel")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("gemm", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "sm90_", "splitkreduce")),
    ("inductor", ("triton_",)),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k.lower() in low for k in keys):
            return kind
    return "other"


@torch.no_grad()
def profile_variant(model, steps: int, prompt_len: int, cache_len: int | None = None) -> dict:
    from rsparse.bench import _Decoder, _static_cache, compile_decode_step

    torch._dynamo.reset()
    step = compile_decode_step(model)
    run = _Decoder(model, step, _static_cache(model, cache_len or prompt_len + 3 * steps + 16))
    vocab = model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(SEED)).cuda()
    tok = run.prefill(prompt)
    for _ in range(8):  # compile, record the graph
        tok = run.step(tok)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        tok = run.step(tok)
    end.record()
    torch.cuda.synchronize()
    ms_events = start.elapsed_time(end) / steps

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tok = run.step(tok)
        torch.cuda.synchronize()
    trace = Path("/tmp/profile_decode_trace.json")
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    kernels = sorted(
        (e for e in events if e.get("cat") == "kernel" and "dur" in e), key=lambda e: e["ts"]
    )
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in kernels:
        by_name[e["name"]].append(e["dur"])
    busy, last_end = 0.0, None
    for e in kernels:
        s, t = e["ts"], e["ts"] + e["dur"]
        if last_end is None or s >= last_end:
            busy += e["dur"]
            last_end = t
        elif t > last_end:
            busy += t - last_end
            last_end = t
    span = (kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]) if kernels else 0.0
    per_kind = collections.Counter()
    count_kind = collections.Counter()
    for name, durs in by_name.items():
        per_kind[kind_of(name)] += sum(durs) / steps
        count_kind[kind_of(name)] += len(durs) / steps
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:25]
    # rsparse's kernels in step order, folded by position inside a decoder layer (q/k/v, o, gate+up,
    # ...: kernels of one name that serve different projections show apart).
    ours = [e for e in kernels if kind_of(e["name"]) == "rsparse"]
    layers = model.config.get_text_config().num_hidden_layers
    per_layer = len(ours) // (steps * layers) if ours else 0
    by_position = []
    if per_layer and len(ours) == steps * layers * per_layer:
        for pos in range(per_layer):
            durs = sorted(e["dur"] for e in ours[pos::per_layer])
            by_position.append({"position": pos, "name": ours[pos]["name"][:60], "median_us": durs[len(durs) // 2]})
    return {
        "ms_per_token_events": ms_events,
        "kernels_per_step": len(kernels) / steps,
        "busy_us_per_step": busy / steps,
        "span_us_per_step": span / steps,
        "idle_us_per_step": (span - busy) / steps,
        "us_per_step_by_kind": dict(per_kind),
        "kernels_per_step_by_kind": dict(count_kind),
        "rsparse_by_position_in_layer": by_position,
        "top_kernels": [
            {"name": n, "kind": kind_of(n), "per_step": len(d) / steps, "us_per_step": sum(d) / steps,
             "median_us": sorted(d)[len(d) // 2]}
            for n, d in top
        ],
    }


def without_decoder_norms(dense):
    """A copy of ``dense`` whose decoder layers' two RMSNorms are `nn.Identity`: what a step would cost if
    the norms were free (an upper bound for folding them into rsparse's launches; its outputs mean nothing).
    Without norms the residual stream of the random-weight model grows until bf16 overflows (layer 10), so
    o_proj and down_proj, the layers that write to it, are scaled by 0.1 (weight values do not change speed)."""
    import copy

    bare = copy.deepcopy(dense)
    for layer in bare.model.layers:
        layer.input_layernorm = torch.nn.Identity()
        layer.post_attention_layernorm = torch.nn.Identity()
        with torch.no_grad():
            layer.self_attn.o_proj.weight.mul_(0.1)
            layer.mlp.down_proj.weight.mul_(0.1)
    return bare


def _attention_then_mlp(layer, hidden_states, *args, **kwargs):
    # A decoder layer with neither norm nor residual add (see without_adds_and_norms).
    hidden_states, _ = layer.self_attn(hidden_states=hidden_states, **kwargs)
    return layer.mlp(hidden_states)


def without_adds_and_norms(dense):
    """`without_decoder_norms`, and each decoder layer's forward is ``mlp(self_attn(h))``: no residual
    adds either. The bound for folding both the adds and the norms into rsparse's launches (an add into
    the epilogue of the launch whose output it adds, the norm into the next launch); outputs mean nothing."""
    import functools

    bare = without_decoder_norms(dense)
    for layer in bare.model.layers:
        layer.forward = functools.partial(_attention_then_mlp, layer)
    return bare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--layers", type=int)
    p.add_argument("--no-fuse", dest="fuse", action="store_false")
    p.add_argument("--silu-ab", action="store_true",
                   help="also profile each target with the SiLU product formed by the model (rsparse.fuse_silu off)")
    p.add_argument("--norms-removed", action="store_true",
                   help="also profile each target on a copy whose decoder layers run no RMSNorm (nn.Identity, thresholds "
                        "calibrated on that copy): wrong numbers, the time a step would take if the norms cost nothing")
    p.add_argument("--fold-ab", action="store_true",
                   help="also profile each target with the decoder norms and residual adds run by the model "
                        "(rsparse.fuse_norm off; the SiLU product stays fused)")
    p.add_argument("--adds-removed", action="store_true",
                   help="also profile each target on a copy with neither the decoder norms nor the residual adds "
                        "(each layer is mlp(self_attn(h))): the bound for folding both into rsparse's launches")
    p.add_argument("--attn", default="sdpa", choices=ATTENTION, help="attention of every variant (decode.py's --attn)")
    args = p.parse_args()
    # decode.py's build_dense reads these; this script always profiles the Llama-3-8B shape on the GPU
    args.model, args.tiny, args.device, args.dtype, args.shape = None, False, "cuda", torch.bfloat16, "llama3-8b"
    import rsparse
    from rsparse.fuse_norm import set_norm_fusion
    from rsparse.fuse_silu import set_silu_fusion

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = build_dense(args)
    results = {}
    rsparse.set_backend("auto")
    t0 = time.perf_counter()
    results["dense"] = profile_variant(dense, args.steps, args.prompt)
    print(f"dense done in {time.perf_counter() - t0:.0f}s", flush=True)

    def profile_sparse(source, target: float, suffixes: dict[str, bool | str]) -> None:
        # suffixes: name suffix -> SiLU product fused (False: F.silu(gate) * up formed by the model;
        # "unfolded": norms and residual adds run by the model, rsparse.fuse_norm off)
        model, _ = sparsify_copy(source, target, "cuda", args.fuse)
        rsparse.set_backend("triton")
        for suffix, silu in suffixes.items():
            set_silu_fusion(model, silu is not False)
            set_norm_fusion(model, silu is True and args.fuse)
            t0 = time.perf_counter()
            results[f"{target:g}{suffix}"] = profile_variant(model, args.steps, args.prompt)
            print(f"{target:g}{suffix} done in {time.perf_counter() - t0:.0f}s", flush=True)
        rsparse.set_backend("auto")
        del model
        torch.cuda.empty_cache()

    for target in args.targets:
        suffixes = {"": True}
        if args.silu_ab:
            suffixes[" (product unfused)"] = False
        if args.fold_ab:
            suffixes[" (norms and adds unfolded)"] = "unfolded"
        profile_sparse(dense, target, suffixes)
        if args.norms_removed:
            profile_sparse(without_decoder_norms(dense), target, {" (decoder norms removed: a bound)": True})
        if args.adds_removed:
            profile_sparse(without_adds_and_norms(dense), target, {" (decoder norms and adds removed: a bound)": True})
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps,
            "prompt": args.prompt, "fused_shared_input": args.fuse, "attention": args.attn}
    (out / "profile_decode.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=1))
    for name, r in results.items():
        print(f"\n## {name}: {r['ms_per_token_events']:.3f} ms/token (events); {r['kernels_per_step']:.0f} kernels, "
              f"busy {r['busy_us_per_step']:.0f} µs, idle {r['idle_us_per_step']:.0f} µs per step")
        print("by kind (µs/step, kernels/step): " + ", ".join(
            f"{k} {v:.0f} ({r['kernels_per_step_by_kind'][k]:.0f})" for k, v in sorted(r["us_per_step_by_kind"].items())))
        print("rsparse kernels by position in a layer (median µs): " + ", ".join(
            f"{b['position']}:{b['name'][:16]} {b['median_us']:.2f}" for b in r["rsparse_by_position_in_layer"]))
        for t in r["top_kernels"][:18]:
            print(f"  {t['us_per_step']:8.1f} µs  x{t['per_step']:5.1f}  med {t['median_us']:6.2f}  [{t['kind']}] {t['name'][:100]}")


if __name__ == "__main__":
    main()
