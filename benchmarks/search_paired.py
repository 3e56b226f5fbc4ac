"""Acceptance 1 of issue 4 with a paired error: the same methods as `search.py`, scored window by window.

`search.py` scores each method on 8 held-out windows of 512 tokens and reports one perplexity per
method. Two methods' perplexities then differ by 1-4 % from one host (BLAS rounding) or thread
count to the next (benchmarks/NOTES.md, budget search notes), which is the size of the differences
acceptance 1 has to decide. This script scores every method on more windows of the same held-out
text (the first 8 are `search.py`'s windows) and compares two methods on the *same* windows:
per window ``d = nll_A - nll_B`` (nats per token), the difference is ``mean(d)`` with the standard
error ``std(d) / sqrt(n)``; the windows are independent stretches of text, the tokens inside one
are not, so the window is the unit. ``exp(mean(d))`` is the ratio of the two perplexities.

    python benchmarks/search_paired.py --targets 0.4 --methods auto/searched magnitude/searched --out a.json
    python benchmarks/search_paired.py --report a.json b.json --baseline magnitude/searched   # table

Sparsification is `search.py`'s (same calibration tokens, seed and settings per method name). Every
finished run is written at once (an interrupted run resumes); ``--report`` merges files from runs
that went side by side and writes ``<first>_paired.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import search  # noqa: E402  (this folder's acceptance-1 grid: the same methods and calibration)

from rsparse.eval import window_nll  # noqa: E402

OFFICIAL_WINDOWS = 8  # search.py's windows: the first ones of the same text


def paired(a: list[float], b: list[float]) -> dict:
    """Per-window difference ``a - b`` of mean NLLs: mean, paired standard error, z, perplexity ratio."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equal-length lists of at least 2 windows, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n)
    return {"n": n, "diff": mean, "se": se, "z": mean / se if se else 0.0, "ratio": math.exp(mean),
            "wins": sum(v < 0 for v in d)}


def ppl(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll))


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    model, heldout, calib, meta = search.load_data(args.seq_len, args.windows, args.calib_samples, args.seed)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results.get("meta", {}).get("text") not in (None, meta["text"]):
        raise ValueError(f"{args.out} holds runs on other windows ({results['meta']['text']}); use another --out")
    results["meta"] = meta
    runs = results.setdefault("runs", {})

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    if "dense" not in runs and not args.no_dense:
        runs["dense"] = {"method": "dense", "nll": window_nll(model, heldout).tolist()}
        save()
    for target in args.targets:
        for method in args.methods:
            key = f"{method}/target={target}"
            if key in runs:
                continue
            sparse, seconds = search.sparsify_method(model, method, target, calib, args.seed)
            nll = window_nll(sparse, heldout).tolist()
            layers = sparse.rsparse_config.layers
            runs[key] = {
                "method": method, "target": target, "nll": nll, "sparsify_seconds": seconds,
                "score": sparse.rsparse_config.score, "layers_with_rank": sum(b.r > 0 for b in layers.values()),
                "layers": len(layers),
            }
            save()
            print(f"{key}: ppl {ppl(nll[:OFFICIAL_WINDOWS]):.2f} on the first {OFFICIAL_WINDOWS} windows, "
                  f"{ppl(nll):.2f} on {len(nll)} ({seconds:.0f} s sparsify, score {runs[key]['score']})", flush=True)
            del sparse


def report(files: list[Path], baseline: str) -> str:
    merged: dict = {}
    meta = None
    for f in files:
        data = json.loads(f.read_text())
        if meta is not None and data["meta"]["text"] != meta["text"]:
            raise ValueError(f"{f} was scored on other windows: {data['meta']['text']} against {meta['text']}")
        meta = data["meta"]
        merged.update(data["runs"])
    dense = merged.get("dense", {}).get("nll")
    n = len(next(iter(merged.values()))["nll"])
    lines = [
        f"Strict perplexity on {meta['text']} (the first {OFFICIAL_WINDOWS} are `search.py`'s), calibration "
        f"{meta['calibration']}, {meta['device']}, torch {meta['torch']}, rsparse {meta['rsparse']}. Paired against "
        f"`{baseline}` window by window: mean NLL difference (nats/token) ± its standard error over the {n} windows, "
        "z, the perplexity ratio it implies, and in how many windows the method's NLL is lower.", "",
    ]
    if dense:
        lines += [f"Dense: {ppl(dense[:OFFICIAL_WINDOWS]):.2f} (first {OFFICIAL_WINDOWS}), {ppl(dense):.2f} (all {n}).", ""]
    lines += [f"| target | method | ppl, first {OFFICIAL_WINDOWS} | ppl, all {n} | vs {baseline}: diff ± se | z | ratio | "
              f"windows lower | sparsify s |", "|---|---|---|---|---|---|---|---|---|"]
    targets = sorted({r["target"] for r in merged.values() if "target" in r})
    for target in targets:
        base = merged.get(f"{baseline}/target={target}")
        for key, r in sorted(merged.items()):
            if r.get("target") != target:
                continue
            cells = "| – | – | – | – |"
            if base is not None and key != f"{baseline}/target={target}":
                p = paired(r["nll"], base["nll"])
                cells = f"| {p['diff']:+.4f} ± {p['se']:.4f} | {p['z']:+.2f} | {p['ratio']:.3f} | {p['wins']}/{p['n']} |"
            lines.append(f"| {target} | {r['method']} ({r.get('score', '–')}, {r.get('layers_with_rank', '–')} with rank) | "
                         f"{ppl(r['nll'][:OFFICIAL_WINDOWS]):.2f} | {ppl(r['nll']):.2f} {cells} {r['sparsify_seconds']:.0f} |")
    if dense and 0.5 in targets and f"magnitude/uniform/target=0.5" in merged:
        uni = ppl(merged["magnitude/uniform/target=0.5"]["nll"]) - ppl(dense)
        lines += ["", f"Goal at 0.5 (all {n} windows): the increase over dense at most half of uniform magnitude's "
                  f"(+{uni:.2f}), i.e. ≤ +{uni / 2:.2f}."]
        for key, r in sorted(merged.items()):
            if r.get("target") == 0.5:
                lines.append(f"- {r['method']}: +{ppl(r['nll']) - ppl(dense):.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--methods", nargs="+", default=["auto/searched", "magnitude/searched", "magnitude/uniform"])
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense row (another run has it)")
    parser.add_argument("--out", type=Path, default=search.RESULTS / "search_paired.json")
    parser.add_argument("--report", type=Path, nargs="+", help="merge these JSON files and print the paired table")
    parser.add_argument("--baseline", default="magnitude/searched")
    args = parser.parse_args()
    if args.report:
        table = report(args.report, args.baseline)
        args.report[0].with_name(args.report[0].stem + "_paired.md").write_text(table)
        print(table)
    else:
        run(args)


if __name__ == "__main__":
    main()
