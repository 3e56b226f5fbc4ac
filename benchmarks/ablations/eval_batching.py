"""Batched vs one-context-per-call scoring (rsparse.eval.loglikelihoods), same requests, timed.

    OMP_NUM_THREADS=2 python benchmarks/ablations/eval_batching.py

The unbatched code is `rsparse/eval.py` of commit eedeb0c, read with `git show`. SmolLM2-135M
at target 0.5 (uniform budgets, BoolQ calibration), the accuracy benchmark's default subsets.
Prints per task and protocol both times, the largest log-likelihood difference and how many
greedy flags differ (sparse strict scores move with batch shape: NOTES, "Strict-protocol
scores move with fp32 rounding").
"""

import copy
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import rsparse
from rsparse import eval as ev
from rsparse.eval import boolq_passages, encode_pair, load_offline_model, read_task, text_windows

OLD_COMMIT = "eedeb0c"
ITEMS = {"piqa": 60, "hellaswag": 36, "arc_easy": 70, "winogrande": 50, "boolq": 50}


def old_eval_module():
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(["git", "-C", str(root), "show", f"{OLD_COMMIT}:src/rsparse/eval.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "eval_unbatched.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("eval_unbatched", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    old = old_eval_module()
    torch.manual_seed(0)
    dense, tok = load_offline_model()
    calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
    model = copy.deepcopy(dense)
    rsparse.sparsify(model, 0.5, calibration=calib, search="none", show_progress=False)
    total = {"old": 0.0, "new": 0.0}
    for task, n in ITEMS.items():
        requests = [encode_pair(tok, c, x) for item in read_task(task, limit=n) for c, x in item.requests()]
        for protocol in ("strict", "deployment"):
            started = time.perf_counter()
            a = old.loglikelihoods(model, requests, protocol=protocol, batch_size=16)
            t_old = time.perf_counter() - started
            started = time.perf_counter()
            b = ev.loglikelihoods(model, requests, protocol=protocol)
            t_new = time.perf_counter() - started
            diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
            flips = sum(x[1] != y[1] for x, y in zip(a, b))
            total["old"] += t_old
            total["new"] += t_new
            print(f"{task:10s} {protocol:10s} requests {len(requests):4d}  old {t_old:6.1f} s  new {t_new:6.1f} s  "
                  f"max |d logp| {diff:.2e}  greedy flags differing {flips}", flush=True)
    print({k: round(v, 1) for k, v in total.items()})


if __name__ == "__main__":
    sys.exit(main())
