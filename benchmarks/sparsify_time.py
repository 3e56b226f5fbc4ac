"""Wall time of `rsparse.sparsify` with default settings on SmolLM2-135M, and the memory it adds.

Default settings: self-generated calibration (16 x 256 tokens), budget search (``search="auto"``,
rho chosen per layer). Reports the seconds (the calibration text generation included) and how
the search spent them, the model-level sparsity, and parameter + buffer bytes of the
sparsified model relative to the dense one (the low-rank factors of the layers the search
gave a rank come on top of the weights).

    python benchmarks/sparsify_time.py [--target 0.5]

Writes benchmarks/results/sparsify_time.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

import rsparse
from rsparse.eval import load_offline_model


def tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sparsify_time.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the search logs its phases
    model, _ = load_offline_model()
    dense_bytes = tensor_bytes(model)
    started = time.perf_counter()
    rsparse.sparsify(model, args.target)
    seconds = time.perf_counter() - started
    result = {
        "model": "SmolLM2-135M-Instruct (fp32)", "target": args.target, "settings": "defaults (search='auto')",
        "layers_with_rank": sum(b.r > 0 for b in model.rsparse_config.layers.values()),
        "sparsify_seconds": round(seconds, 1),
        "model_sparsity": rsparse.summary(model).model_sparsity,
        "bytes_ratio_vs_dense": tensor_bytes(model) / dense_bytes,
        "device": f"CPU {platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "rsparse": rsparse.__version__,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
