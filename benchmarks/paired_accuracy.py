"""Paired comparison of two methods' zero-shot answers on the same items (from `benchmarks/accuracy.py`'s JSON).

    python benchmarks/paired_accuracy.py benchmarks/results/accuracy_gpu_full_paired.json \
        --baseline magnitude --methods rsparse-auto rsparse-uniform [--target 0.5 --protocol strict]

Every method of an accuracy run answers the same items, so the difference of two accuracies has a
smaller error than two independent rows: per item ``d = hit_A - hit_B``, the difference is
``mean(d)`` with standard error ``std(d) / sqrt(n)``. Also the discordant counts (items only A got
right, only B got right) and McNemar's ``z = (b - c) / sqrt(b + c)``. Needs rows with per-item
``hits`` (written since 2026-12-02). Prints a markdown table and writes it beside the JSON
(``<name>_paired.md``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def paired(a: str, b: str) -> dict:
    """Difference of two per-item hit strings of equal length: mean, paired standard error, McNemar."""
    if len(a) != len(b) or not a:
        raise ValueError(f"hit strings must be non-empty and of equal length, got {len(a)} and {len(b)}")
    d = [int(x) - int(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    only_a, only_b = d.count(1), d.count(-1)
    z = (only_a - only_b) / math.sqrt(only_a + only_b) if only_a + only_b else 0.0
    return {"n": n, "diff": mean, "se": math.sqrt(var / n), "only_a": only_a, "only_b": only_b, "z": z}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path)
    parser.add_argument("--baseline", default="magnitude")
    parser.add_argument("--methods", nargs="+", default=["rsparse-auto", "rsparse-uniform"])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--protocol", default="strict")
    args = parser.parse_args()
    rows = json.loads(args.json.read_text())["rows"]

    def row(method: str, task: str) -> dict | None:
        return rows.get(f"{method}|{args.target}|{args.protocol}|{task}")

    tasks = sorted({r["task"] for r in rows.values() if "hits" in r})
    lines = [f"Paired differences against `{args.baseline}` (target {args.target}, {args.protocol}; "
             f"from `{args.json.name}`): points, paired standard error, items only the method / only the "
             "baseline got right, McNemar z.", "",
             "| method | task | metric | difference | paired se | only method / only baseline | z |", "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        for task in tasks:
            mine, base = row(method, task), row(args.baseline, task)
            if not mine or not base or "hits" not in mine or "hits" not in base:
                continue
            for metric, key in (("acc", "hits"), ("acc_norm", "hits_norm")):
                p = paired(mine[key], base[key])
                lines.append(f"| {method} | {task} | {metric} | {100 * p['diff']:+.2f} | {100 * p['se']:.2f} | "
                             f"{p['only_a']} / {p['only_b']} | {p['z']:+.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.json.with_name(args.json.stem + "_paired.md").write_text(text)


if __name__ == "__main__":
    main()
