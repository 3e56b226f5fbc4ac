"""Speed of the R-Sparse decode kernels against cuBLAS dense, on Llama-3-8B layer shapes.

Protocol: random bf16 weights, seed 0; the threshold ``tau`` of each layer is the
quantile of ``|x|*c`` (``c`` = column norms) that keeps ``k = rho*(1-s)*n`` channels of
the benchmark input, so the kernel reads the real number of rows; rank
``r = floor((1-rho)*(1-s)*m*n/(m+n))``.  Each case is timed as the median over CUDA-graph
replays of a graph that calls the layer on ``copies`` different weight copies in turn
(together several times the 60 MB L2, so every call reads cold memory), divided by
``copies``.  Dense is ``F.linear`` (cuBLAS, ``[out, in]`` weight) timed the same way in
the same run.  "bytes" counts what the sparse kernel must read: the weight rows of the
channels active for some token of the batch, the low-rank factors, ``c`` and ``x``.
``--factor-bits 4`` stores the factors packed in 4 bits (`rsparse.factor_quant`): the same
``rho`` then buys four times the rank (``r /= factor_bits / 16``), at the same bytes.

    python benchmarks/kernel_speed.py                 # full table -> benchmarks/results/
    python benchmarks/kernel_speed.py --sweep         # also tile-size sweep on the big shapes
    python benchmarks/kernel_speed.py --plot results/kernels.json   # PNG from a JSON (no GPU)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

L2_BYTES = 60e6
SEED = 0
SPARSITIES = [0.0, 0.4, 0.5, 0.7, 0.9]
RHOS = [1.0, 0.8]
BATCHES = [1, 4]
# name -> (n, [m per projection]); fused cases share the input.
CASES = {
    "q/o 4096->4096": (4096, [4096]),
    "k/v 4096->1024": (4096, [1024]),
    "gate/up 4096->14336": (4096, [14336]),
    "down 14336->4096": (14336, [4096]),
    "qkv fused 4096->4096+1024+1024": (4096, [4096, 1024, 1024]),
    "gate+up fused 4096->2x14336": (4096, [14336, 14336]),
    "qkv fused + o": (4096, [4096, 1024, 1024]),  # plus an o_proj 4096->4096 call
}


def build_layer(n, m, s, rho, x, dtype, device, gen, factor_bits=16, rank=None):
    """One RSparseLinear with random weights and tau calibrated on ``x`` to the budget (``rank``: the
    budget's channels with this rank instead of its own)."""
    from rsparse.budget import layer_budget
    from rsparse.factor_quant import quantize_factors
    from rsparse.nn import RSparseLinear, column_norms

    budget = layer_budget(n, m, s, rho, factor_bits=factor_bits)
    if rank is not None:
        budget = dataclasses.replace(budget, r=rank)
    mod = RSparseLinear(n, m, budget.r, dtype=dtype, device=device, mode="sparse", factor_bits=factor_bits)
    w = torch.randn(m, n, device=device, dtype=dtype, generator=gen) * n**-0.5
    mod.weight_t.data = w.t().contiguous()
    mod.c.copy_(column_norms(w))
    if budget.r:
        li = torch.randn(n, budget.r, device=device, dtype=dtype, generator=gen) * n**-0.5
        lo = torch.randn(budget.r, m, device=device, dtype=dtype, generator=gen)
        if factor_bits == 16:
            mod.lowrank_in.copy_(li)
            mod.lowrank_out.copy_(lo)
        else:
            for name, t in zip(("lowrank_in", "lowrank_out", "lowrank_quant"), quantize_factors(li, lo)):
                getattr(mod, name).copy_(t)
    keep = budget.k / n
    if keep >= 1:
        mod.tau.fill_(-1.0)
    else:
        score = (x.abs().float() * mod.c).flatten()
        mod.tau.copy_(torch.quantile(score, 1 - keep))
    mod.budget = budget
    return mod, w


def must_read_bytes(mod, x):
    active = x.abs().float() * mod.c > mod.tau
    rows = int(active.any(0).sum())
    item = mod.weight_t.element_size()
    factors = mod.lowrank_in.numel() * mod.lowrank_in.element_size() + mod.lowrank_out.numel() * mod.lowrank_out.element_size()
    quant = 0 if mod.factor_ranges() is None else mod.factor_ranges().numel() * 4
    return rows * mod.out_features * item + factors + quant + mod.in_features * 4, rows


def capture(fns):
    """One CUDA graph that calls ``fns`` (one per weight copy) in turn, compiled and warmed up outside it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:  # compile and warm up outside the capture
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    for _ in range(3):
        graph.replay()
    return graph


def replay_us(graph, calls, reps):
    """Median µs per call over ``reps`` replays of ``graph``, which holds ``calls`` calls."""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times)


def graph_time_us(fns, reps):
    """Median µs per call of ``fns`` (one per weight copy) replayed in one CUDA graph."""
    graph = capture(fns)
    t = replay_us(graph, len(fns), reps)
    del graph
    return t


def alternating_us(calls: dict, copies: int, reps: int, rounds: int) -> dict[str, list[float]]:
    """``{name: [µs per call, one per round]}``: every graph captured once, then timed in turn, round after
    round, so that a drift of the GPU's speed during the case reaches dense and sparse alike."""
    graphs = {name: capture(fns) for name, fns in calls.items()}
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, graph in graphs.items():
            times[name].append(replay_us(graph, copies, reps))
    del graphs
    return times


def same_bytes_us(x, layer, reps, rounds, dtype, device, gen):
    """cuBLAS on the bytes the sparse kernel reads: ``F.linear`` of each projection's first ``k`` input
    channels, ``k`` the rows the sparse call reads (random weights of that shape, copies rotated beyond L2
    like the others).  What streaming those bytes as a dense GEMV costs: a bound to read the speed-ups
    against.  Projections with a low-rank path are not covered (their bytes are not a weight slice)."""
    shapes = []
    for mod in layer:
        rows = must_read_bytes(mod, x)[1]
        xin = x if mod.in_features == x.shape[1] else torch.randn(x.shape[0], mod.in_features, device=device,
                                                                    dtype=dtype, generator=gen)
        shapes.append((xin[:, :rows].contiguous(), mod.out_features, rows))
    item = torch.tensor([], dtype=dtype).element_size()
    sliced = sum(m * k for _, m, k in shapes) * item
    copies = max(2, math.ceil(3 * L2_BYTES / max(sliced, 1)))
    ws = [[torch.randn(m, k, device=device, dtype=dtype, generator=gen) for _, m, k in shapes] for _ in range(copies)]
    calls = [lambda w=w: [F.linear(xk, wk) for (xk, _, _), wk in zip(shapes, w)] for w in ws]
    return alternating_us({"same_bytes": calls}, copies, reps, rounds)["same_bytes"]


def run_case(name, n, ms, s, rho, T, dtype, device, reps, gen, rounds=1, same_bytes=False, factor_bits=16):
    from rsparse.nn import RSparseLinear, forward_shared_input

    with_o = name == "qkv fused + o"
    item = torch.tensor([], dtype=dtype).element_size()
    layer_bytes = n * sum(ms) * item + (4096 * 4096 * item if with_o else 0)
    copies = max(2, math.ceil(3 * L2_BYTES / layer_bytes))
    x = torch.randn(T, n, device=device, dtype=dtype, generator=gen)
    layers, dense_w, byte_count, rows = [], [], 0, []
    for _ in range(copies):
        mods, ws = zip(*[build_layer(n, m, s, rho, x, dtype, device, gen, factor_bits) for m in ms])
        if with_o:
            o, wo = build_layer(4096, 4096, s, rho, x, dtype, device, gen, factor_bits)
            mods, ws = mods + (o,), ws + (wo,)
        layers.append(mods)
        dense_w.append(ws)
    for mod in layers[0]:
        b, r_ = must_read_bytes(mod, x)
        byte_count += b
        rows.append(r_ / mod.in_features)

    def sparse_call(mods):
        if with_o:
            return lambda: (forward_shared_input(x, list(mods[:3])), mods[3](x))
        if len(mods) > 1:
            return lambda: forward_shared_input(x, list(mods))
        return lambda: mods[0](x)

    def kernel_call(mods):  # the sparse kernel even where the module would pick dense
        args = lambda m: (m.weight_t, m.c, m.tau, m.lowrank_in, m.lowrank_out, m.bias)  # noqa: E731
        quant = lambda ms: [m.factor_ranges() for m in ms] if factor_bits != 16 else None  # noqa: E731
        if with_o:
            return lambda: (
                torch.ops.rsparse.sparse_linear_multi(x, *[list(a) for a in zip(*[args(m) for m in mods[:3]])],
                                                      lowrank_quant=quant(mods[:3])),
                torch.ops.rsparse.sparse_linear(x, *args(mods[3]), lowrank_quant=mods[3].factor_ranges()),
            )
        return lambda: torch.ops.rsparse.sparse_linear_multi(x, *[list(a) for a in zip(*[args(m) for m in mods])],
                                                             lowrank_quant=quant(mods))

    def dense_call(ws):
        return lambda: [F.linear(x, w) for w in ws]

    # layers that keep every channel: for one token on the Triton kernels the module takes the kernel (since the
    # thirty-eighth session), otherwise the dense GEMM, and the kernel is then timed beside it
    dense_module = any(not m.takes_kernel(x) for m in layers[0])
    calls = {"module": [sparse_call(m) for m in layers], "dense": [dense_call(w) for w in dense_w]}
    if dense_module:
        calls["kernel"] = [kernel_call(m) for m in layers]
    times = alternating_us(calls, copies, reps, rounds)
    t_mod, t_dense = statistics.median(times["module"]), statistics.median(times["dense"])
    t_ker = statistics.median(times["kernel"]) if dense_module else t_mod
    extra = {}
    if same_bytes and rho == 1.0:
        t_sb = same_bytes_us(x, layers[0], reps, rounds, dtype, device, gen)
        extra = {"us_dense_same_bytes": round(statistics.median(t_sb), 2),
                 "us_dense_same_bytes_rounds": [round(t, 2) for t in t_sb],
                 "speedup_cublas_same_bytes": round(t_dense / statistics.median(t_sb), 3)}
    # correctness of this very case against the reference, once
    from rsparse.ops import sparse_linear_reference

    errs = []
    for mod in layers[0]:
        tensors = (mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias)
        ref = sparse_linear_reference(x, *tensors, None, mod.factor_ranges()).double()
        y = torch.ops.rsparse.sparse_linear(x, *tensors, lowrank_quant=mod.factor_ranges())
        errs.append(((y.double() - ref).norm() / ref.norm()).item())
    del layers, dense_w
    return {
        "case": name, "n": n, "m": ms + ([4096] if with_o else []), "sparsity": s, "rho": rho, "batch": T,
        "factor_bits": factor_bits,
        "rank": [build_rank(n, m, s, rho, factor_bits) for m in ms]
        + ([build_rank(4096, 4096, s, rho, factor_bits)] if with_o else []),
        "rows_read_fraction": rows, "copies": copies,
        "us_module": round(t_mod, 2), "us_kernel": round(t_ker, 2), "us_dense": round(t_dense, 2),
        "speedup_module": round(t_dense / t_mod, 3), "speedup_kernel": round(t_dense / t_ker, 3),
        "rounds": rounds, "us_module_rounds": [round(t, 2) for t in times["module"]],
        "us_dense_rounds": [round(t, 2) for t in times["dense"]],
        # the speed-up of each round (dense and sparse timed side by side), then their median
        "speedup_module_by_round": round(statistics.median(d / m for d, m in zip(times["dense"], times["module"])), 3),
        "bytes": byte_count, "GBps_kernel": round(byte_count / t_ker / 1e3, 1),
        "dense_module_dispatch": dense_module, "max_rel_err_vs_reference": max(errs), **extra,
    }


def time_switch_variants(name, T, s, dtype, device, gen, reps, rounds, variants, silu_fed=False):
    """One case (a `CASES` name) under several settings of the kernels' module switches, on the same layers: each
    variant in its own CUDA graph, timed in turn round after round beside cuBLAS dense (`alternating_us`).

    ``silu_fed``: the layer is a gated MLP's down projection, called as `sparsify` installs it
    (``forward_silu_mul(gate, up)``, whose one-token inline launch forms ``F.silu(gate) * up`` itself), against
    ``F.linear(F.silu(gate) * up)``; one projection cases only.

    ``variants``: ``{label: (rho, factor_bits, apply)}``, ``apply()`` setting the switches; it runs before every
    call, so each graph captures its own launches.  Layers are built once per ``(rho, factor_bits)``.  Returns
    ``{label: {"us", "us_rounds", "rel_err"}}`` (the error of one call against the reference) and ``"dense"``."""
    from rsparse.nn import forward_shared_input
    from rsparse.ops import sparse_linear_reference

    n, ms = CASES[name]
    with_o = name == "qkv fused + o"
    if silu_fed and (len(ms) > 1 or with_o):
        raise ValueError(f"silu_fed takes a case of one projection, got {name!r}")
    item = torch.tensor([], dtype=dtype).element_size()
    copies = max(2, math.ceil(3 * L2_BYTES / (n * sum(ms) * item + (4096 * 4096 * item if with_o else 0))))
    x = torch.randn(T, n, device=device, dtype=dtype, generator=gen)
    if silu_fed:
        gate, up = (torch.randn(T, n, device=device, dtype=dtype, generator=gen) for _ in range(2))
        x = F.silu(gate) * up  # what the layers are calibrated and checked on
    shapes = [(n, m) for m in ms] + ([(4096, 4096)] if with_o else [])
    built = {}  # (rho, bits) -> copies of ((modules), (dense weights))
    for rho, bits, _ in variants.values():
        if (rho, bits) not in built:
            built[(rho, bits)] = [tuple(zip(*[build_layer(a, b, s, rho, x, dtype, device, gen, bits)
                                              for a, b in shapes])) for _ in range(copies)]

    def sparse_call(mods, apply):
        def call():
            apply()
            if with_o:
                return forward_shared_input(x, list(mods[:3])), mods[3](x)
            if silu_fed:
                return mods[0].forward_silu_mul(gate, up)
            return forward_shared_input(x, list(mods)) if len(mods) > 1 else mods[0](x)
        return call

    calls, errs = {}, {}
    for label, (rho, bits, apply) in variants.items():
        calls[label] = [sparse_call(mods, apply) for mods, _ in built[(rho, bits)]]
        apply()
        err = 0.0
        for mod in built[(rho, bits)][0][0]:
            ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias,
                                          None, mod.factor_ranges()).double()
            y = mod.forward_silu_mul(gate, up) if silu_fed else mod(x)
            err = max(err, ((y.double() - ref).norm() / ref.norm()).item())
        errs[label] = err
    if silu_fed:
        calls["dense"] = [lambda ws=ws: F.linear(F.silu(gate) * up, ws[0]) for _, ws in next(iter(built.values()))]
    else:
        calls["dense"] = [lambda ws=ws: [F.linear(x, w) for w in ws] for _, ws in next(iter(built.values()))]
    times = alternating_us(calls, copies, reps, rounds)
    out = {label: {"us": round(statistics.median(t), 2), "us_rounds": [round(u, 2) for u in t],
                   "rel_err": errs.get(label)} for label, t in times.items()}
    del built, calls
    if device == "cuda" or getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
    return out, copies


SHOWN = ("case", "sparsity", "variant", "us", "us_rounds", "us_dense", "speedup", "over_rho1", "rel_err")


def variant_timing(res, label):
    """The timing fields of variant ``label`` in a `time_switch_variants` result: its own, cuBLAS's, the speed-up
    over cuBLAS, and the change over variant ``rho1`` (None where the run has no such variant)."""
    us, dense = res[label]["us"], res["dense"]["us"]
    over = round(us / res["rho1"]["us"] - 1, 4) if "rho1" in res else None
    return {**res[label], "us_dense": dense, "speedup": round(dense / us, 3), "over_rho1": over}


def write_row(out, row, shown=SHOWN):
    """Print the fields ``shown`` of an ablation's row as one JSON line, and write the whole row to ``out``."""
    print(json.dumps({k: row[k] for k in shown if k in row}), flush=True)
    out.write(json.dumps(row) + "\n")


def build_rank(n, m, s, rho, factor_bits=16):
    from rsparse.budget import layer_budget

    return layer_budget(n, m, s, rho, factor_bits=factor_bits).r


SWEEP = {  # kind -> (block_k, block_m, programs_per_sm, num_warps, num_stages); first = previous best
    "gemv1": [(8, 1024, 4, 4, 1), (16, 1024, 2, 4, 1), (8, 1024, 8, 4, 1), (16, 1024, 4, 4, 2)],
    "dot": [(16, 512, 3, 4, 3), (16, 512, 2, 4, 4), (32, 256, 3, 4, 3)],
}
SWEEP_CASES = ("gate/up 4096->14336", "down 14336->4096")


def sweep(dtype, device, reps, gen):
    """Tile-size sweep on the big shapes at 50 %, rho 1; returns the rows and the best
    configuration of each kind (least total time over the shapes)."""
    from rsparse.kernels import sparse_linear as K

    out, best = [], {}
    for kind, T in (("gemv1", 1), ("dot", 4)):
        totals = {}
        for params in SWEEP[kind]:
            bk, bm, pps, nw, st = params
            cfg = K.Config(block_k=bk, block_m=bm, programs_per_sm=pps, num_warps=nw, num_stages=st)
            K.set_config(cfg, kind)
            for name in SWEEP_CASES:
                n, ms = CASES[name]
                try:
                    r = run_case(name, n, ms, 0.5, 1.0, T, dtype, device, reps, gen)
                    row = {"case": name, "batch": T, "config": cfg.__dict__, "us": r["us_kernel"],
                           "us_dense": r["us_dense"], "err": r["max_rel_err_vs_reference"]}
                    totals[params] = totals.get(params, 0.0) + r["us_kernel"]
                except Exception as e:  # a config that does not compile is a data point too
                    row = {"case": name, "batch": T, "config": cfg.__dict__, "error": repr(e)[:300]}
                    totals[params] = float("inf")
                print(json.dumps(row), flush=True)
                out.append(row)
        p = min(totals, key=totals.get)
        best[kind] = K.Config(block_k=p[0], block_m=p[1], programs_per_sm=p[2], num_warps=p[3], num_stages=p[4])
        K.set_config(None, kind)
    return out, best


def overheads(device, reps):
    """Fixed costs inside a graph: a small memset, an empty-ish Triton launch."""
    z = lambda: torch.zeros(16384, device=device)  # noqa: E731
    return {"us_zeros_16k_fp32": round(graph_time_us([z] * 20, reps), 2)}


# The kernel module's on/off switches, recorded with every run (their values say which launches were timed).
SWITCHES = ("DOT_Z_ITEMS", "PACKED_LONG_INPUT_WIDE_Z", "PACKED_LEVELS", "PACKED_LONG_INPUT_LEVELS",
            "RANKED_COMPACT_MAX_ACTIVE", "SINGLE_COMPACT_MAX_ACTIVE", "SINGLE_TALL_STEPS_MAX_ACTIVE", "PREWAIT")


def markdown(rows, meta):
    bound = any("us_dense_same_bytes" in r for r in rows)
    lines = [
        f"Device: {meta['device']}; dtype {meta['dtype']}; torch {meta['torch']}, triton {meta['triton']}; "
        f"seed {meta['seed']}; {meta['date']}. Median µs per call under CUDA-graph replay, weights rotated "
        "over copies beyond L2. `module` is what RSparseLinear / forward_shared_input runs (dense when the "
        "budget keeps every channel), `kernel` the Triton kernel itself; speedup = cuBLAS dense / module."
        + (" `cuBLAS, same bytes`: F.linear on a slice of each weight as large as the rows the sparse call "
           "reads, and its speed-up over the whole weight (rho 1 rows only)." if bound else "")
        + ("" if "switches" not in meta else " Kernel switches: "
           + ", ".join(f"`{k} = {v!r}`" for k, v in meta["switches"].items()) + ".")
        + ("" if not meta.get("card_settings") else " Card settings on this device (`CARD_SETTINGS`): "
           + ", ".join(f"`{k} = {v}`" for k, v in meta["card_settings"].items()) + "."),
        "",
        "| case | s | rho | batch | rows read | dense µs | module µs | kernel µs | speedup | GB/s kernel |"
        + (" cuBLAS, same bytes |" if bound else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if bound else ""),
    ]
    for r in rows:
        frac = "/".join(f"{f:.2f}" for f in r["rows_read_fraction"])
        cell = ""
        if bound:
            cell = (f" {r['us_dense_same_bytes']} ({r['speedup_cublas_same_bytes']:.2f}×) |"
                    if "us_dense_same_bytes" in r else " – |")
        lines.append(
            f"| {r['case']} | {r['sparsity']} | {r['rho']}{' (4-bit)' if r.get('factor_bits', 16) != 16 else ''} | "
            f"{r['batch']} | {frac} | {r['us_dense']} | "
            f"{r['us_module']} | {r['us_kernel']} | {r['speedup_module']:.2f}× | {r['GBps_kernel']} |" + cell
        )
    return "\n".join(lines) + "\n"


def plot(json_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(json_path).read_text())
    rows = [r for r in data["rows"] if r["batch"] == 1]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    if not cases:  # only batched rows: the plot is of batch 1 (kernel run 59's batch-4 probes failed here)
        print(f"no batch-1 rows, so no {png_path.name}")
        return
    fig, axes = plt.subplots(2, math.ceil(len(cases) / 2), figsize=(4 * math.ceil(len(cases) / 2), 7))
    for ax, case in zip(axes.flat, cases):
        for rho, bits, style in ((1.0, 16, "-o"), (0.8, 16, "--s"), (0.8, 4, ":^")):
            rr = [r for r in rows if r["case"] == case and r["rho"] == rho and r.get("factor_bits", 16) == bits]
            if rr:
                label = f"rsparse rho={rho}" + (f", {bits}-bit factors" if bits != 16 else "")
                ax.plot([r["sparsity"] for r in rr], [r["us_module"] for r in rr], style, label=label)
        dense = [r["us_dense"] for r in rows if r["case"] == case]
        ax.axhline(statistics.median(dense), color="k", lw=1, label="cuBLAS dense")
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("µs (batch 1)")
        ax.set_ylim(bottom=0)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle(f"R-Sparse Triton decode kernels, {data['meta']['device']}, bf16, CUDA graph", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def parse_config(text: str, kind: str):
    """``"key=value,..."`` -> a kernels ``Config`` (``ValueError`` naming the option and the bad key)."""
    from rsparse.kernels import sparse_linear as K

    fields = {f.name: f.type for f in dataclasses.fields(K.Config)}
    kw = {}
    for item in text.split(","):
        key, _, val = item.partition("=")
        if key not in fields:
            raise ValueError(f"--{kind} keys must be Config fields {sorted(fields)}, got {key!r}")
        kw[key] = val if key == "path" else (val in ("1", "true", "True") if fields[key] in (bool, "bool") else int(val))
    return K.Config(**kw)


def parse_switch(text: str):
    """``"NAME=VALUE"`` -> ``(NAME, value)`` for an existing `sparse_linear` setting; VALUE is read as a number, True /
    False, or else kept as text."""
    from rsparse.kernels import sparse_linear as K

    name, sep, raw = text.partition("=")
    if not sep or not hasattr(K, name) or not name.isupper():
        raise ValueError(f"--switch expects NAME=VALUE for a setting of rsparse.kernels.sparse_linear, got {text!r}")
    for kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            pass
    return name, {"True": True, "False": False}.get(raw, raw)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--sweep", action="store_true", help="also sweep tile sizes on the big shapes")
    p.add_argument("--no-table", action="store_true",
                   help="time no cases at all (with --sweep: the tile sweep alone); the JSON then has no rows")
    p.add_argument("--plot", metavar="JSON", help="only draw the PNG from a results JSON")
    p.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these strings")
    p.add_argument("--sparsities", type=float, nargs="*", default=SPARSITIES)
    p.add_argument("--batches", type=int, nargs="*", default=BATCHES)
    p.add_argument("--rhos", type=float, nargs="*", default=RHOS)
    p.add_argument("--factor-bits", type=int, nargs="*", default=[16], choices=[16, 4],
                   help="bits per stored low-rank factor value (4: packed, four times the rank at equal bytes)")
    p.add_argument("--rounds", type=int, default=1,
                   help="time dense and sparse in turn this many times per case, on the same layers (medians reported)")
    p.add_argument("--same-bytes", action="store_true",
                   help="also time cuBLAS on a slice of each weight as large as what the sparse call reads (rho 1 rows)")
    p.add_argument("--gemv1", metavar="KEY=VALUE,...",
                   help="one-token Config fields, e.g. path=compact,block_k=8,programs_per_sm=4,pdl=1")
    p.add_argument("--dot", metavar="KEY=VALUE,...",
                   help="Config fields forced on every launch of 2-16 tokens, e.g. "
                        "block_k=16,block_m=512,programs_per_sm=3,num_warps=4,num_stages=3 (default: choose_config's rule)")
    p.add_argument("--switch", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of rsparse.kernels.sparse_linear for the whole run, e.g. PACKED_LEVELS=convert")
    args = p.parse_args()
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    if args.plot:
        plot(args.plot, Path(args.plot).with_suffix(".png"))
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernel_speed.py needs a CUDA GPU")
    import triton

    import rsparse

    rsparse.set_backend("triton")
    from rsparse.kernels import sparse_linear as K

    for kind in ("gemv1", "dot"):
        if getattr(args, kind):
            K.set_config(parse_config(getattr(args, kind), kind), kind)
    for name, value in (parse_switch(text) for text in args.switch):
        setattr(K, name, value)
    device, dtype = "cuda", torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(SEED)
    torch.manual_seed(SEED)
    meta = {
        "device": torch.cuda.get_device_name(), "dtype": "bfloat16", "torch": torch.__version__,
        "triton": triton.__version__, "seed": SEED, "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "protocol": "median per call over CUDA-graph replays, weights rotated over copies (3x L2)", "reps": args.reps,
        "gemv1": args.gemv1 or "default", "dot": args.dot or "default", "rounds": args.rounds,
        "switches": {name: getattr(K, name) for name in SWITCHES},
        # what `sparse_linear.CARD_SETTINGS` overrules on this card (the launches read the card's name)
        "card_settings": {name: repr(value)
                          for name, value in K.card_settings(K.card_name(torch.device(device))).items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "overheads": overheads(device, args.reps)}
    print(json.dumps(result["overheads"]), flush=True)
    if args.sweep:
        from rsparse.kernels import sparse_linear as K

        result["sweep"], best = sweep(dtype, device, args.reps, gen)
        for kind, cfg in best.items():  # the table runs with the best configuration found
            K.set_config(cfg, kind)
        meta["configs"] = {k: v.__dict__ for k, v in best.items()}
        print("best configs:", meta["configs"], flush=True)
    rows = []
    if not args.no_table:
        for name, (n, ms) in CASES.items():
            if args.cases and not any(c in name for c in args.cases):
                continue
            for T in args.batches:
                for rho in args.rhos:
                    for s in args.sparsities:
                        for bits in args.factor_bits if rho < 1 else [16]:  # rho 1 has no factors
                            r = run_case(name, n, ms, s, rho, T, dtype, device, args.reps, gen, args.rounds,
                                         args.same_bytes, bits)
                            print(json.dumps(r), flush=True)
                            rows.append(r)
                        result["rows"] = rows  # what has run survives a time limit
                        (out / "kernels.json").write_text(json.dumps(result, indent=1))
    result["rows"] = rows
    (out / "kernels.json").write_text(json.dumps(result, indent=1))
    if rows:
        md = markdown(rows, meta)
        (out / "kernels.md").write_text(md)
        print(md)
        try:
            plot(out / "kernels.json", out / "kernels.png")
        except ImportError:
            print("matplotlib missing: draw the plot with --plot", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
