"""Ablation (issue 4): channel weights ``c_j = sqrt(Σ_o F_o W[o, j]²)`` instead of ``||W[:, j]||``.

    python benchmarks/ablations/fisher_channel_weights.py 0.5 none 1.0   # target, search, power of F

``F_o``: diagonal Fisher of each linear's output coordinates (squared gradients of the
log-likelihood of tokens sampled from the dense model, 16 x 256 BoolQ calibration tokens),
normalised by its mean and raised to ``power``. The score ``|x_j|·c_j`` then weighs a channel
by how much its column moves the outputs the loss is sensitive to. Prints the strict held-out
perplexity (8 x 512 BoolQ tokens). Result in benchmarks/NOTES.md (budget search notes).
"""
import copy, sys, time, torch, logging
import rsparse, rsparse.install as inst
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
from torch import nn
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1]); search = sys.argv[2]; power = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
lin = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}
F = {n: torch.zeros(m.out_features, dtype=torch.float64) for n, m in lin.items()}
def track(n):
    def hook(mod, args, out):
        def g(grad):
            F[n] += grad.detach().double().square().flatten(0, -2).sum(0)
        out.register_hook(g)
    return hook
hs = [m.register_forward_hook(track(n)) for n, m in lin.items()]
hs.append(model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.requires_grad_()))
for p in model.parameters(): p.requires_grad_(False)
gen = torch.Generator().manual_seed(0)
t = time.time()
with torch.enable_grad():
    for i in range(0, calib.shape[0], 4):
        lp = model(input_ids=calib[i:i+4], use_cache=False).logits.float().log_softmax(-1)
        s = torch.multinomial(lp.detach().exp().flatten(0, 1), 1, generator=gen)
        (-lp.flatten(0, 1).gather(1, s).sum()).backward()
for h in hs: h.remove()
print("fisher pass", time.time() - t, flush=True)
cw = {}
for n, m in lin.items():
    f = (F[n] / F[n].mean()).float() ** power
    cw[id(m)] = (f[:, None] * m.weight.detach().float().square()).sum(0).sqrt()
orig = inst._channel_weights
def patched(linear, score):
    if id(linear) in cw and score == "rsparse":
        return cw[id(linear)].to(linear.weight.device)
    return orig(linear, score)
inst._channel_weights = patched
sp = copy.deepcopy(model)  # the copy has new module ids: map the weights over by name
cw2 = {}
for n, m in sp.named_modules():
    if n in lin: cw2[id(m)] = cw[id(lin[n])]
cw.clear(); cw.update(cw2)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, search=search, **({"rho": 1.0} if search == "none" else {}))
print(f"target {target} search {search} power {power}: sparsify {time.time()-t:.0f}s ppl {perplexity(sp, held, protocol='strict'):.2f}", flush=True)
