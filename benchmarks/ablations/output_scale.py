"""Ablation (issue 4): rescale each sparse layer's outputs by a least-squares factor.

    python benchmarks/ablations/output_scale.py 0.5 auto     # searched budgets (the default)

Sparsifies SmolLM2-135M (16 x 256 BoolQ calibration tokens) and prints the strict held-out
perplexity (8 x 512 BoolQ tokens). It then runs the calibration tokens through the sparse model
with every token sparse. At every RSparseLinear it accumulates, per output channel, ``Σ y·ŷ``
and ``Σ ŷ²``, where ``y`` is the dense output on the layer's actual input and ``ŷ`` the sparse
one. Two corrections are folded into the weights (no runtime cost), and the perplexity is
printed after each:

* one factor per layer, ``α = Σ y·ŷ / Σ ŷ²``;
* one factor per output channel, ``α_o``, the same ratio per output.

The masks do not change: ``c`` and ``tau`` stay as they were. The result is in benchmarks/NOTES.md
(budget search notes).
"""
import copy, sys, time, torch
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
from rsparse.nn import RSparseLinear

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
search = sys.argv[2] if len(sys.argv) > 2 else "auto"
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, search=search,
                 rho=1.0 if search == "none" else None)
print("sparsify", round(time.time() - t), "s", flush=True)
print("base ppl", perplexity(sp, held, protocol="strict"), flush=True)

rsparse.set_mode(sp, "sparse")
cross, energy = {}, {}


def hook(name):
    def f(mod, args, out):
        x = args[0].reshape(-1, mod.in_features)
        y = torch.nn.functional.linear(x, mod.weight_t.t(), mod.bias).double()
        yh = out.reshape(-1, mod.out_features).double()
        cross[name] = cross.get(name, 0) + (y * yh).sum(0)
        energy[name] = energy.get(name, 0) + (yh * yh).sum(0)
    return f


mods = {n: m for n, m in sp.named_modules() if isinstance(m, RSparseLinear)}
hs = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
with torch.no_grad():
    for i in range(0, calib.shape[0], 4):
        sp(calib[i:i + 4])
for h in hs:
    h.remove()
rsparse.set_mode(sp, "auto")


def scaled(per_output: bool):
    out = copy.deepcopy(sp)
    got = {n: m for n, m in out.named_modules() if isinstance(m, RSparseLinear)}
    alphas = []
    for n, m in got.items():
        a = cross[n] / energy[n].clamp_min(1e-30) if per_output else cross[n].sum() / energy[n].sum()
        a = a.float()
        alphas.append(a.mean().item())
        with torch.no_grad():
            m.weight_t.mul_(a.to(m.weight_t.dtype))
            if m.rank:
                m.lowrank_out.mul_(a.to(m.lowrank_out.dtype))
            if m.bias is not None:
                m.bias.mul_(a.to(m.bias.dtype))
    return out, alphas


for per_output in (False, True):
    out, alphas = scaled(per_output)
    a = torch.tensor(alphas)
    print(("per-output" if per_output else "per-layer"), "alpha mean", round(a.mean().item(), 4),
          "min", round(a.min().item(), 4), "max", round(a.max().item(), 4), flush=True)
    print(("per-output" if per_output else "per-layer"), "ppl", perplexity(out, held, protocol="strict"), flush=True)
