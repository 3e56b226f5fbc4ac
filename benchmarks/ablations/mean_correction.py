"""Ablation (issue 4): add the dropped inputs' mean contribution ``W·E[x̄]`` as a bias.

    python benchmarks/ablations/mean_correction.py 0.5 none      # uniform budgets, rho 1

Sparsifies SmolLM2-135M (16 x 256 BoolQ calibration tokens), prints the strict held-out
perplexity (8 x 512 BoolQ tokens), then measures ``E[x ⊙ (1 - m)]`` at every RSparseLinear
on the calibration tokens (minus what a low-rank path already models), adds ``W·E[x̄]`` to the
bias and prints the perplexity again. Result in benchmarks/NOTES.md (budget search notes).
"""
import copy, sys, time, torch
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
from rsparse.nn import RSparseLinear
from rsparse.ops import active_mask

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
search = sys.argv[2] if len(sys.argv) > 2 else "none"
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, search=search, rho=1.0 if search == "none" else None)
print("sparsify", time.time() - t, flush=True)
print("base ppl", perplexity(sp, held, protocol="strict"), flush=True)
# sequential: layer by layer in forward order, accumulate mean of dropped inputs with hooks, then add biases all at once
sums, counts = {}, {}
def hook(name):
    def f(mod, args):
        x = args[0].reshape(-1, mod.in_features).float()
        m = active_mask(x, mod.c, mod.tau)
        xb = torch.where(m, 0.0, x)
        # subtract what the low-rank path already models
        sums[name] = sums.get(name, 0) + xb.sum(0).double()
        counts[name] = counts.get(name, 0) + x.shape[0]
    return f
hs = [m.register_forward_pre_hook(hook(n)) for n, m in sp.named_modules() if isinstance(m, RSparseLinear)]
with torch.no_grad():
    for i in range(0, calib.shape[0], 4):
        sp(calib[i:i+4])
for h in hs: h.remove()
for n, m in sp.named_modules():
    if isinstance(m, RSparseLinear):
        mean = (sums[n] / counts[n]).float()
        corr = m.weight_t.t().float() @ mean
        if m.rank:
            corr = corr - (mean @ m.lowrank_in.float()) @ m.lowrank_out.float()
        if m.bias is None:
            m.bias = torch.nn.Parameter(corr.to(m.weight_t.dtype), requires_grad=False)
        else:
            m.bias.data += corr
print("bias-corrected ppl", perplexity(sp, held, protocol="strict"), flush=True)
