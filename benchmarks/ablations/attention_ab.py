"""Attention A/B in one process: transformers' SDPA against the packed decode attention
(`rsparse.bench.packed_sdpa_attention`: a decode token's grouped query heads attend on their key/value
head instead of on copies of K and V expanded to every query head) and the split-key one
(`rsparse.bench.split_key_attention`: the same packing, the keys cut into ranges over many programs of
a Triton kernel), given to the dense model and to
each sparse copy alike, in the order of ``--attentions``. Same model and harness as `decode.py`
(Llama-3-8B shape, random bf16 weights, compiled static-cache decode, batch 1, prompt 128).

    python benchmarks/ablations/attention_ab.py --targets 0.7 0.5 --attentions sdpa sdpa-packed sdpa sdpa-packed \
        --out $OUT/attention_ab.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from decode import SEED, build_dense, sparsify_copy  # noqa: E402


def set_attention(model, choice: str) -> None:
    from rsparse.bench import use_packed_attention, use_split_key_attention

    if choice == "sdpa-packed":
        use_packed_attention(model)
    elif choice == "split-key":
        use_split_key_attention(model)
    else:
        model.set_attn_implementation("sdpa")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=float, nargs="+", default=[0.7])
    p.add_argument("--attentions", nargs="+", default=["sdpa", "sdpa-packed"], choices=["sdpa", "sdpa-packed", "split-key"])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time-limit", type=float, default=1e9, help="start no attention round after this many s")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny widths on the CPU: a smoke test of this script")
    args = p.parse_args()
    args.model, args.device, args.dtype, args.shape, args.layers, args.attn = (
        None, "cpu" if args.tiny else "cuda", torch.float32 if args.tiny else torch.bfloat16, "llama3-8b", None, "sdpa")
    start = time.perf_counter()
    import rsparse
    from rsparse.bench import decode_speed

    dense = build_dense(args)
    sparse = {t: sparsify_copy(dense, t, args.device)[0] for t in args.targets}
    rsparse.set_backend("triton" if args.device == "cuda" else "auto")
    kw = dict(batch_size=1, prompt_len=128, new_tokens=args.new_tokens, compile=True, repeats=args.repeats, seed=SEED)
    out = Path(args.out)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "attentions": args.attentions}
    rows = []
    for attention in args.attentions:
        if time.perf_counter() - start > args.time_limit:
            print(f"time limit: {attention} and later rounds not run", flush=True)
            break
        for target, model in [(None, dense), *sparse.items()]:
            set_attention(model, attention)
            torch._dynamo.reset()
            rows.append({"variant": "dense" if target is None else f"{target:g}", "target": target, "attention": attention,
                         **decode_speed(model, **kw)})
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))  # after every row
            print(f"{attention} {rows[-1]['variant']}: {rows[-1]['ms_per_token']:.3f} ms/token, "
                  f"{rows[-1]['graphs_compiled']} graph(s), {rows[-1]['graph_breaks']} break(s)", flush=True)


if __name__ == "__main__":
    main()
