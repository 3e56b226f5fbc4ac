"""Ablation (issue 4): does the low-rank path's gain measured on the calibration tokens hold on other text?

    OMP_NUM_THREADS=2 python benchmarks/ablations/rank_overfit.py 0.4 0.8        # optional third argument: shrinkage

The search prices the low-rank path by each linear's residual curve: the share of the inactive inputs'
output energy ``||W x̄||²`` left after the rank-``r`` factors, computed from the second moment of ``x̄`` on
the very calibration tokens the factors are fitted on. If the leading directions of that second moment
are partly noise of the sample, the curve promises more than the factors deliver on new text. For every
decoder linear of SmolLM2-135M this fits the activation-aware factors at the rank a uniform budget
``(target, rho)`` buys, on the inputs of 16 x 256 BoolQ calibration tokens, and measures the share
left (a) on those tokens (what the tables see) and (b) on 16 x 256 held-out BoolQ tokens.

Inputs are the dense model's (a simplification: in the search, upstream layers are sparse) and the
mask is the channel score ``|x_j|·||W[:, j]||`` against a threshold at the calibration quantile that
keeps ``rho · (1 - target)`` of the channels. Results: benchmarks/NOTES.md, budget search notes.
"""
import math
import sys
from collections import defaultdict

import torch

from rsparse.eval import boolq_passages, load_offline_model, text_windows
from rsparse.factorize import activation_aware_factors

target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.4
rho = float(sys.argv[2]) if len(sys.argv) > 2 else 0.8
# Optional: shrink the second moment toward its diagonal before fitting, (1 - s) M + s diag(M)
# (thirteenth session: does a less noisy covariance carry better to new text?).
shrink = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
torch.manual_seed(0)
model, tok = load_offline_model()
texts = {"calibration": text_windows(boolq_passages("calibration"), tok, 256, 16),
         "heldout": text_windows(boolq_passages("heldout"), tok, 256, 16)}
linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
inputs = {k: defaultdict(list) for k in texts}


def record(which, name):
    def hook(module, args, out):
        inputs[which][name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
    return hook


for which, windows in texts.items():
    handles = [m.register_forward_hook(record(which, n)) for n, m in linears.items()]
    with torch.no_grad():
        for batch in windows.split(4):
            model(input_ids=batch, use_cache=False)
    for h in handles:
        h.remove()

rows = []
for name, m in linears.items():
    w = m.weight.detach().float()
    n_in, n_out = w.shape[1], w.shape[0]
    rank = math.floor((1 - rho) * (1 - target) * n_in * n_out / (n_in + n_out))
    if rank == 0:
        continue
    c = torch.linalg.vector_norm(w, dim=0)
    x_fit = torch.cat(inputs["calibration"][name])
    tau = torch.quantile((x_fit.abs() * c)[:4096].flatten(), 1 - rho * (1 - target))
    shares = []
    for which in ("calibration", "heldout"):
        x = torch.cat(inputs[which][name])
        xbar = x * ((x.abs() * c) <= tau)
        if which == "calibration":
            moment = xbar.t() @ xbar / len(xbar)
            moment = (1 - shrink) * moment + shrink * torch.diag(moment.diagonal())
            a, b, _ = activation_aware_factors(w, rank, moment)
        y = xbar @ w.t()
        err = y - (xbar @ a) @ b
        shares.append(float(err.square().sum() / y.square().sum()))
    rows.append((name, rank, *shares))
    print(f"{name:45s} rank {rank:3d}  left on calibration {shares[0]:.3f}  on held-out {shares[1]:.3f}", flush=True)

by_kind = defaultdict(list)
for name, rank, fit, held in rows:
    by_kind[name.rsplit(".", 1)[-1]].append((fit, held))
print(f"target {target} rho {rho}: mean share of the inactive inputs' output energy left by the low-rank path")
for kind, v in sorted(by_kind.items()):
    fit = sum(f for f, _ in v) / len(v)
    held = sum(h for _, h in v) / len(v)
    print(f"  {kind:10s} calibration {fit:.3f}  held-out {held:.3f}  (removed: {1 - fit:.3f} -> {1 - held:.3f})")
