"""Sanity check of `lowbit_rest.py`'s hook (twenty-eighth session): with an exact copy (W itself) for the dropped
channels, the sparse model must score as the dense one (8 held-out windows, uniform 0.5).

    OMP_NUM_THREADS=2 python benchmarks/ablations/lowbit_rest_exact_check.py
"""
import copy
import math
import os
import sys

import torch

import rsparse
from rsparse.eval import window_nll
from rsparse.fuse import set_fusion
from rsparse.nn import RSparseLinear

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 8, 16, 0)
dense = window_nll(model, held)
sp = copy.deepcopy(model)
rsparse.sparsify(sp, 0.5, calibration=calib, seed=0, show_progress=False, search="none", rho=1.0)
set_fusion(sp, False)
n = 0
for m in sp.modules():
    if isinstance(m, RSparseLinear):
        w = m.weight_t.detach().float().clone()
        def hook(mod, args, out, w=w):
            x = args[0]
            if not mod.takes_kernel(x):
                return out
            inact = torch.where(x.abs().float() * mod.c > mod.tau, 0.0, x.float())
            return (out.float() + inact @ w).to(out.dtype)
        m.register_forward_hook(hook); n += 1
exact = window_nll(sp, held)
print("hooks", n, "dense ppl", math.exp(dense.mean()), "sparse + exact rest ppl", math.exp(exact.mean()),
      "max window |diff|", (exact - dense).abs().max().item())
