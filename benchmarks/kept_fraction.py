"""Does each layer keep the fraction of channels its budget says, on tokens it was not calibrated on?

SmolLM2-135M, uniform budgets (rho=1, "rsparse" score), every layer in "sparse" mode (strict).
For each calibration source (BoolQ passages / self-generated text) and target, the kept
fraction of every layer is measured on held-out tokens of the same source and of the other.

    python benchmarks/kept_fraction.py

Writes benchmarks/results/kept_fraction.json and .md.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

import rsparse
from rsparse.calibrate import self_generated_tokens
from rsparse.eval import boolq_passages, load_offline_model, text_windows

RESULTS = Path(__file__).parent / "results"


def main(targets=(0.5, 0.7), samples: int = 16, seed: int = 0) -> None:
    model, tokenizer = load_offline_model()
    calib = {
        "boolq": text_windows(boolq_passages("calibration"), tokenizer, 256, samples),
        "self-generated": self_generated_tokens(model, samples, 256, seed=seed, batch_size=32),
    }
    heldout = {
        "boolq": text_windows(boolq_passages("heldout"), tokenizer, 256, 8),
        "self-generated": self_generated_tokens(model, 8, 256, seed=seed + 1, batch_size=32),
    }
    rows = []
    for source, tokens in calib.items():
        for target in targets:
            sparse = copy.deepcopy(model)
            started = time.perf_counter()
            rsparse.sparsify(sparse, target, calibration=tokens, seed=seed, show_progress=False)
            seconds = time.perf_counter() - started
            for evaluated, held in heldout.items():
                report = rsparse.summary(sparse, tokens=held)
                devs = [layer.kept - layer.expected_kept for layer in report.layers]
                worst = max(report.layers, key=lambda layer: abs(layer.kept - layer.expected_kept))
                by_kind = {}
                for layer in report.layers:
                    by_kind.setdefault(layer.name.rsplit(".", 1)[1], []).append(layer.kept)
                rows.append({
                    "calibration": source, "heldout": evaluated, "target": target,
                    "model_sparsity": report.model_sparsity, "expected_kept": 1 - target,
                    "max_abs_deviation": max(abs(d) for d in devs), "mean_deviation": sum(devs) / len(devs),
                    "worst_layer": worst.name, "mean_kept_by_projection": {k: sum(v) / len(v) for k, v in by_kind.items()},
                    "sparsify_seconds": seconds,
                })
                print(json.dumps(rows[-1]), flush=True)
    meta = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)", "protocol": "strict (all tokens sparse)",
        "calibration": f"{samples} x 256 tokens", "heldout": "8 x 256 tokens per source (BoolQ second half / self-generated seed+1)",
        "rho": 1.0, "score": "rsparse", "seed": seed, "device": "CPU", "torch": torch.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kept_fraction.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Kept fraction on held-out tokens (SmolLM2-135M, rho=1, strict)", "",
        "Produced by `python benchmarks/kept_fraction.py`. Expected kept fraction = 1 - target for every layer.", "",
        "| calibration | held-out | target | model sparsity | max abs deviation | mean deviation | worst layer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['calibration']} | {r['heldout']} | {r['target']} | {r['model_sparsity']:.3f} | "
            f"{r['max_abs_deviation']:.3f} | {r['mean_deviation']:+.3f} | {r['worst_layer']} |"
        )
    (RESULTS / "kept_fraction.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
