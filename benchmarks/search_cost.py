"""What the budget search costs, and how the cost grows with layers and calibration tokens (issue 4).

Runs `sparsify`'s pipeline step by step on a model of Llama-3-8B shape (hidden 4096, MLP 14336,
GQA 32/8 heads, vocabulary 128256) with random bf16 weights and random calibration tokens:
search cost does not depend on weight values. Each configuration is timed in three parts:

* tables: the uniform pass (calibration, score/energy histograms, second moments, factors);
* evaluations: the end-to-end KL evaluations of the refinement;
* install: the final calibrate + install pass with the chosen budgets.

    python benchmarks/search_cost.py --device cuda --configs 4x16 8x16 4x32 16x16 32x16 --out DIR
    python benchmarks/search_cost.py --device cuda --configs 32x16 --factor-bits 16   # bf16 factors, as before 2026-12-05

``LxS`` means L decoder layers and S calibration sequences of --seq-len tokens. Writes
search_cost.jsonl (a line per configuration, as soon as it is done) under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import rsparse
from rsparse.api import _target_linears
from rsparse.config import RSparseConfig
from rsparse.install import install_layers
from rsparse.search import search_budgets

LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(layers: int, device: str, dtype: torch.dtype, tiny: bool):
    import transformers as tf

    shape = dict(LLAMA3_8B, num_hidden_layers=layers)
    if tiny:  # a CPU smoke test of this script
        shape.update(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**shape), dtype=dtype)
    return model.eval()


@torch.no_grad()
def measure(layers: int, samples: int, args) -> dict:
    model = build(layers, args.device, args.dtype, args.tiny)
    vocab = model.config.vocab_size
    tokens = torch.randint(3, vocab, (samples, args.seq_len), generator=torch.Generator().manual_seed(1))
    batches = list(tokens.to(args.device).split(8))
    cfg = RSparseConfig(target=args.target, search_evaluations=args.evaluations, factor_bits=args.factor_bits)
    targets = _target_linears(model, cfg)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(args.device)
    t0 = time.perf_counter()
    result = search_budgets(model, targets, batches, cfg, show_progress=False)
    _sync(args.device)
    t1 = time.perf_counter()
    install_layers(model, targets, batches, result.budgets, cfg, show_progress=False)
    _sync(args.device)
    t2 = time.perf_counter()
    row = {
        "layers": layers, "samples": samples, "seq_len": args.seq_len, "linears": len(targets),
        "factor_bits": args.factor_bits,
        "evaluations": result.evaluations, "seconds_tables": round(result.seconds_tables, 2),
        "seconds_evaluations": round(result.seconds_evaluations, 2), "seconds_search": round(t1 - t0, 2),
        "seconds_install": round(t2 - t1, 2), "seconds_total": round(t2 - t0, 2),
        "kl": result.kl, "uniform_kl": result.uniform_kl, "score": result.score, "score_kl": result.score_kl,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda" else None,
    }
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["4x16", "8x16", "4x32", "16x16"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--evaluations", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--factor-bits", type=int, default=RSparseConfig().factor_bits, choices=[16, 4],
                        help="bits per stored low-rank factor value (default: the library's)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "search_cost.jsonl"
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__, "rsparse": rsparse.__version__, "dtype": str(args.dtype),
        "model": "Llama-3-8B shape, random weights" + (" (tiny smoke test)" if args.tiny else ""),
        "target": args.target, "date": time.strftime("%Y-%m-%d"),
    }
    with path.open("a") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
    for config in args.configs:
        layers, samples = (int(v) for v in config.split("x"))
        row = measure(layers, samples, args)
        print(json.dumps(row), flush=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
