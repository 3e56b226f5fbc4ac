"""Ablation (issue 4): the search's prices recalibrated per decoder layer by a measured end-to-end KL.

The search prices each linear's relative output error by a second-order (Fisher) estimate from the dense
model. This script measures, before the refinement, what each part of the model really costs on its own:
for each decoder layer (``GRAN=layer``) or each layer's attention and MLP halves (``GRAN=half``), the KL on
the search's held-out tokens with only that part at the uniform budget (rho 1) and every other layer dense.
Each part's prices are scaled so that the tables predict that KL (``f = measured / predicted``, raised to
``POWER``, default 1), and the default refinement goes on from there with its usual 32 evaluations (the
measurements come on top: 30 or 60 forward passes). Scored like `search_variant.py` (64 held-out windows):

    OMP_NUM_THREADS=1 GRAN=layer python benchmarks/ablations/search_layer_kl.py 0.5 layer-kl out.json

Results: benchmarks/NOTES.md, budget search notes ("Tried in the twenty-third session").
"""
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch

import rsparse.search as search_module
from rsparse.budget import layer_budget

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

logging.basicConfig(level=logging.WARNING)
log = logging.getLogger("rsparse.search")
log.setLevel(logging.INFO)
target, name, out = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
GRAN = os.environ.get("GRAN", "layer")
POWER = float(os.environ.get("POWER", "1"))
original_refine = search_module._refine
record: dict = {"parts": {}}


def part_of(linear: str) -> str:
    layer = int(re.search(r"layers\.(\d+)\.", linear).group(1))
    if GRAN == "layer":
        return f"{layer}"
    return f"{layer}.{'mlp' if '.mlp.' in linear else 'attn'}"


def calibrated_refine(tables, evaluate, uniform, cfg, show_progress, known=None, spent=0):
    started = time.perf_counter()
    names = tables.names
    uniform_option = int(torch.argmin((tables.density - (1 - cfg.target)).abs() + (tables.rho != 1.0) * 10))
    predicted_each = tables.sensitivity * tables.dropped[:, uniform_option]
    dense = {k: layer_budget(*tables.shapes[k], 0.0, 1.0) for k in names}
    parts: dict[str, list[int]] = {}
    for i, k in enumerate(names):
        parts.setdefault(part_of(k), []).append(i)
    scale = torch.ones(len(names), dtype=torch.float64)
    for part, members in parts.items():
        budgets = dict(dense, **{names[i]: uniform[names[i]] for i in members})
        measured = evaluate(budgets)
        predicted = float(predicted_each[members].sum())
        record["parts"][part] = [measured, predicted]
        for i in members:
            scale[i] = (max(measured, 1e-12) / max(predicted, 1e-30)) ** POWER
    # Only the ratios between parts matter to the allocation; normalise to a geometric mean of 1.
    scale /= torch.exp(torch.log(scale).mean())
    tables.sensitivity = tables.sensitivity * scale
    ratios = sorted(float(s) for s in scale)
    record["scale"] = {"min": ratios[0], "median": ratios[len(ratios) // 2], "max": ratios[-1]}
    record["measure_seconds"] = time.perf_counter() - started
    log.info("per-%s KL measured in %.1fs; scale min %.3f median %.3f max %.3f", GRAN, record["measure_seconds"],
             *record["scale"].values())
    return original_refine(tables, evaluate, uniform, cfg, show_progress, known=known, spent=spent)


search_module._refine = calibrated_refine

torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
record.update(granularity=GRAN, power=POWER)
search.score_variant(model, held, calib, meta, target, name, out, record)
assert record["parts"], "the patched refinement did not run"
