"""Ablation (issue 4): would rotating the inputs make 50 % activation sparsity cheaper?

    OMP_NUM_THREADS=1 python benchmarks/ablations/rotation_error.py

Relative output error ``||W x_dropped||² / ||W x||²`` of keeping, per token, the top half of the
channels by ``|x_j|·||W_j||`` at the q/k/v (concatenated) and gate/up (concatenated) inputs of
SmolLM2-135M, on 4 x 256 BoolQ calibration tokens. Three bases: the original, one global PCA
rotation of the normalised residual stream (foldable into the weights at no runtime cost), and
a per-layer PCA (LaRoSA-style; costs a rotation per layer at runtime). PCA fitted on 4 other
sequences. Result in benchmarks/NOTES.md (budget search notes).
"""
import torch
from rsparse.eval import boolq_passages, load_offline_model, text_windows
torch.manual_seed(0); torch.set_num_threads(1)
model, tok = load_offline_model()
calib = text_windows(boolq_passages("calibration"), tok, 256, 8)
layers = model.model.layers
H = {}
def hook(i, kind):
    def f(mod, args):
        h = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        H.setdefault((i, kind), []).append(h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    return f
hs = []
for i, l in enumerate(layers):
    hs.append(l.input_layernorm.register_forward_pre_hook(hook(i, "attn")))
    hs.append(l.post_attention_layernorm.register_forward_pre_hook(hook(i, "mlp")))
with torch.no_grad():
    model(calib[:4]); model(calib[4:])
for h in hs: h.remove()
fit = {k: torch.cat(v)[:1024] for k, v in H.items()}   # first 4 sequences: PCA fit
test = {k: torch.cat(v)[1024:] for k, v in H.items()}  # last 4: evaluation
cov = sum(x.T @ x for x in fit.values()); evals, Q = torch.linalg.eigh(cov.double()); Q = Q.float()
def rel_err(x, W, keep):
    # x [T, n] inputs, W [m, n]; per token keep the top `keep` of |x_j|*||W_j||
    c = W.norm(dim=0)
    s = x.abs() * c
    k = int(keep * x.shape[1])
    thr = s.kthvalue(x.shape[1] - k, dim=1, keepdim=True).values
    xd = torch.where(s > thr, 0.0, x)
    return ((xd @ W.T).pow(2).sum() / (x @ W.T).pow(2).sum()).item()
tot = {"orig": [], "rot": [], "rot_layer": []}
for (i, kind), xh in test.items():
    l = layers[i]
    if kind == "attn":
        g = l.input_layernorm.weight.float(); W = torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight, l.self_attn.v_proj.weight]).float()
    else:
        g = l.post_attention_layernorm.weight.float(); W = torch.cat([l.mlp.gate_proj.weight, l.mlp.up_proj.weight]).float()
    x = xh * g; Wg = W * g  # W acting on the normalised stream
    e0 = rel_err(x, W, 0.5)
    e1 = rel_err(xh @ Q, Wg @ Q, 0.5)
    cl = fit[(i, kind)]; _, Ql = torch.linalg.eigh((cl.T @ cl).double()); Ql = Ql.float()
    e2 = rel_err(xh @ Ql, Wg @ Ql, 0.5)
    tot["orig"].append(e0); tot["rot"].append(e1); tot["rot_layer"].append(e2)
    if i % 5 == 0: print(i, kind, f"orig {e0:.4f}  global-PCA {e1:.4f}  layer-PCA {e2:.4f}", flush=True)
for k, v in tot.items(): print(k, "mean rel err", sum(v) / len(v))
