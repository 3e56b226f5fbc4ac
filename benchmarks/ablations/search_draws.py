"""Acceptance 1(c) of issue 4 over several calibration draws: the default search against the searched magnitude
baseline, per target and draw, paired by held-out window, and the geometric mean over draws.

    python benchmarks/ablations/search_draws.py benchmarks/results/search_paired_run1.json \\
        benchmarks/results/search_draw2_s12.json benchmarks/results/search_draw3_s13.json

Each file holds `search_variant.py` / `search_paired.py` runs (per-window NLL on the same 64 held-out windows);
a run's draw is read from its name ("draw 2", "draw3"; none: draw 1). Prints a markdown table.
"""
import json
import math
import re
import sys
from collections import defaultdict

import torch

runs = {}
for path in sys.argv[1:]:
    for name, run in json.load(open(path))["runs"].items():
        if name == "dense":
            runs["dense"] = torch.tensor(run["nll"], dtype=torch.float64)
            continue
        method = "default" if name.startswith("auto/searched") else "magnitude" if name.startswith("magnitude/searched") else None
        if method is None:
            continue
        found = re.search(r"draw ?(\d+)", name)
        draw = int(found.group(1)) if found else 1
        runs[(method, run["target"], draw)] = (torch.tensor(run["nll"], dtype=torch.float64), run.get("layers_with_rank"),
                                               run.get("score"))

by_target = defaultdict(list)
print("| target | draw | default: ppl (rule, layers with rank) | magnitude searched | default / magnitude (z, windows lower) |")
print("|---|---|---|---|---|")
for (method, target, draw) in sorted(k for k in runs if k != "dense" and k[0] == "default"):
    if ("magnitude", target, draw) not in runs:
        continue
    a, ranks, score = runs[("default", target, draw)]
    m = runs[("magnitude", target, draw)][0]
    d = a - m
    z = d.mean() / (d.std() / math.sqrt(len(d)))
    ratio = math.exp(d.mean())
    by_target[target].append(d.mean().item())
    rule = {"rsparse": "cn", "magnitude": "mag"}.get(score, score)
    print(f"| {target} | {draw} | {math.exp(a.mean()):.2f} ({rule}, {ranks}) | {math.exp(m.mean()):.2f} | "
          f"{ratio:.3f} ({z:+.1f}, {(d < 0).sum().item()}/{len(d)}) |")
print()
for target, diffs in sorted(by_target.items()):
    mean = sum(diffs) / len(diffs)
    spread = (sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"target {target}: {len(diffs)} draws, geometric-mean ratio {math.exp(mean):.3f} "
          f"(draw-to-draw sd of the log ratio {spread:.3f}; wins {sum(x < 0 for x in diffs)} of {len(diffs)})")
