"""Ablation (issue 4): re-fit the weights of the active channels so that they also carry the dropped part.

    OMP_NUM_THREADS=2 python benchmarks/ablations/weight_compensation.py 0.5 none out.json

For each `RSparseLinear`, the calibration inputs ``x`` it sees in the sparse model (every token sparse) give
the mask ``m``, the active part ``a = x * m`` and the part the layer misses, ``r = W x - (W a + L(x - a))``
(``L``: the low-rank path). A ridge regression ``r ~ D a`` over the calibration tokens gives a correction
``D`` that is added to the weight: the runtime reads the same rows, the bytes do not change, and the
correction predicts the dropped channels' contribution from the kept ones (the low-rank path predicts it from
the dropped ones). ``target = "dense"`` instead regresses the dense model's output at that layer (its input is
the dense model's), so the correction also takes up the error of the layers before.

The script prints each linear's relative output error on 4 held-out calibration sequences (fitted on the
other 12) before and after, for a few ridge strengths, then fits on all 16 and scores the strict perplexity
on `search_paired.py`'s 64 held-out windows, paired against the same model without the correction.
"""
import copy
import json
import sys
import time
from pathlib import Path

import torch

import rsparse
from rsparse.eval import window_nll
from rsparse.nn import rsparse_modules, set_mode
from rsparse.ops.reference import active_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import search  # noqa: E402

target, search_kind, out = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
alphas = [float(a) for a in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1e-3, 1e-2, 1e-1]
regress_to = sys.argv[5] if len(sys.argv) > 5 else "local"
torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
sparse = copy.deepcopy(model)
t0 = time.perf_counter()
rsparse.sparsify(sparse, target, calibration=calib, seed=0, show_progress=False, search=search_kind)
print(f"sparsify {time.perf_counter() - t0:.0f} s", flush=True)
mods = rsparse_modules(sparse)


def collect(net, names):
    store = {n: [] for n in names}
    def hook(name):
        return lambda module, args: store[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())

    hooks = [net.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in calib.split(4):
            net(input_ids=batch, use_cache=False)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in store.items()}


set_mode(sparse, "sparse")
xs = collect(sparse, list(mods))
xd = collect(model, list(mods)) if regress_to == "dense" else None
ntok = xs[next(iter(mods))].shape[0]
fit, test = slice(0, ntok * 3 // 4), slice(ntok * 3 // 4, ntok)


def parts(name, x, xdense):
    m = mods[name]
    W = m.weight_t.float()  # [in, out]
    act = active_mask(x, m.c, m.tau)
    a = torch.where(act, x, 0.0)
    y_sparse = a @ W
    if m.rank:
        y_sparse = y_sparse + ((x - a) @ m.lowrank_in.float()) @ m.lowrank_out.float()
    y_true = (xdense if xdense is not None else x) @ W
    return a, y_true - y_sparse, y_true


def ridge(a, r, alpha):
    g = a.T.double() @ a.double()
    lam = alpha * g.diagonal().mean()
    g.diagonal().add_(lam)
    return torch.linalg.solve(g, a.T.double() @ r.double()).float()


report = {"target": target, "search": search_kind, "regress_to": regress_to, "layers": {}}
tot = {a: [0.0, 0.0] for a in alphas}
for name in mods:
    x = xs[name]
    xdn = xd[name] if xd is not None else None
    a, r, y = parts(name, x, xdn)
    row = {"before": (r[test].pow(2).sum() / y[test].pow(2).sum()).item()}
    for al in alphas:
        D = ridge(a[fit], r[fit], al)
        e = r[test] - a[test] @ D
        row[str(al)] = (e.pow(2).sum() / y[test].pow(2).sum()).item()
        tot[al][0] += row["before"]
        tot[al][1] += row[str(al)]
    report["layers"][name] = row
    if name.startswith("model.layers.0.") or name.startswith("model.layers.15.") or name.startswith("model.layers.29."):
        print(name, {k: round(v, 5) for k, v in row.items()}, flush=True)
for al in alphas:
    print(f"alpha {al}: mean relative error {tot[al][0] / len(mods):.5f} -> {tot[al][1] / len(mods):.5f}", flush=True)
best = min(alphas, key=lambda al: tot[al][1])
report["alpha"] = best

base = window_nll(sparse, held)
print(f"strict ppl, as sparsified: {base.mean().exp().item():.3f}", flush=True)
with torch.no_grad():
    for name, m in mods.items():
        a, r, _ = parts(name, xs[name], xd[name] if xd is not None else None)
        m.weight_t.add_(ridge(a, r, best).to(m.weight_t.dtype))
comp = window_nll(sparse, held)
d = comp - base
report.update(base_ppl=base.mean().exp().item(), comp_ppl=comp.mean().exp().item(),
              diff_mean=d.mean().item(), diff_se=(d.std() / len(d) ** 0.5).item(),
              base_nll=base.tolist(), comp_nll=comp.tolist())
print(f"strict ppl, compensated (alpha {best}): {report['comp_ppl']:.3f}  "
      f"diff {d.mean():.4f} +- {report['diff_se']:.4f} nats", flush=True)
out.write_text(json.dumps(report, indent=1))
