"""Measurement (issues 5/6, batch > 1): share of weight rows a batched decode step must read.

A batch of B sequences decoded together reads a weight row if any of the B current tokens keeps
that input channel. This script sparsifies SmolLM2-135M (uniform budgets, BoolQ calibration),
runs B held-out BoolQ passages side by side through the model (every token sparse, as in decode)
and, at every position, takes the union of the B tokens' active channels per layer. It prints the
mean share of rows read for B = 1, 2, 4, 8, weighted by layer size, next to what independent
tokens would give (1 - (1 - a)^B).

    python benchmarks/ablations/batch_union.py 0.5
"""
import sys

import torch

import rsparse
from rsparse.eval import boolq_passages, load_offline_model, text_windows
from rsparse.nn import rsparse_modules
from rsparse.ops.reference import active_mask

target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
torch.manual_seed(0)
model, tok = load_offline_model()
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
rsparse.sparsify(model, target, calibration=calib, search="none", rho=1.0, show_progress=False)
rsparse.set_mode(model, "sparse")
texts = text_windows(boolq_passages("heldout"), tok, 128, 8)  # 8 sequences x 128 tokens

masks = {}
hooks = [
    m.register_forward_pre_hook(lambda mod, args, name=name: masks.__setitem__(name, active_mask(args[0], mod.c, mod.tau)))
    for name, m in rsparse_modules(model).items()
]
with torch.no_grad():
    model(input_ids=texts, use_cache=False)
for h in hooks:
    h.remove()
sizes = {n: m.in_features * m.out_features for n, m in rsparse_modules(model).items()}
total = sum(sizes.values())
print(f"SmolLM2-135M, uniform budgets at target {target}, rho 1; 8 held-out BoolQ sequences x 128 tokens")
for B in (1, 2, 4, 8):
    read = indep = 0.0
    for name, mask in masks.items():  # mask: [8, 128, n]
        groups = mask.view(8 // B, B, *mask.shape[1:])
        union = groups.any(1).float().mean()
        a = mask.float().mean()
        read += sizes[name] * float(union)
        indep += sizes[name] * float(1 - (1 - a) ** B)
    print(f"batch {B}: rows read {read / total:.3f} (independent tokens would read {indep / total:.3f})")
