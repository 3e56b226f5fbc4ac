"""Issue 6, acceptance 2: where the Triton and PyTorch backends part on SmolLM2 (fp32, GPU).

    PYTHONPATH=src:... python benchmarks/ablations/backend_divergence.py

Sparsifies SmolLM2-135M at 0.5 as `test_gpu_smollm2_triton_agrees_with_torch_per_layer` does,
decodes 64 greedy tokens with the Triton backend (eager), then runs both backends teacher-forced
on those tokens and prints each step's largest logit difference, and for one decode step every
RSparseLinear's output under both backends on the same captured input (relative difference).
Rounding-level differences (1e-6 relative per layer) that grow only after a threshold flip are
the sparse model's sensitivity; a layer far above that would be a kernel bug.

The prompt has 8 tokens, so with ``decode_cutoff = 8`` the prefill runs sparse too (T = 8 rows per
call). Added in the ninth session: the per-layer check on the prefill's inputs (the batched launches,
alone and fused per shared-input group); where the two backends' masks first differ when each runs
the whole prefill; and the same greedy comparison with the prefill dense (every layer's
``decode_cutoff`` lowered to 4, so only the single-token steps run sparse).
"""
import os

import torch

import rsparse
from rsparse import bench
from rsparse.eval import load_offline_model
from rsparse.fuse import linked_groups
from rsparse.nn import fused_forward, rsparse_modules
from teacher_forcing import greedy_logits

DRY = os.environ.get("DRY") == "1"  # a CPU run: 4 steps; "triton" is the interpreter under TRITON_INTERPRET=1, else torch
DEVICE = "cpu" if DRY else "cuda"
TRITON = "triton" if not DRY or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
model, tokenizer = load_offline_model(torch.float32)
model = model.to(DEVICE)
calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).to(DEVICE)
rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", show_progress=False)
mods = rsparse_modules(model)
print("layers with a rank:", sum(1 for m in mods.values() if m.rank > 0), "of", len(mods), flush=True)
prompt = tokenizer("The capital of France is a city that", return_tensors="pt").input_ids.to(DEVICE)
STEPS = 4 if DRY else 64


def rel(a, b):
    """Relative difference of ``a`` from ``b``."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


rsparse.set_backend(TRITON)
ref_toks, ref = greedy_logits(model, prompt, STEPS)
rsparse.set_backend("torch")
_, other = greedy_logits(model, prompt, STEPS, forced=ref_toks)
diff = (other - ref).abs().amax(-1)
print("teacher-forced max|dlogit| per step (torch vs triton):", " ".join(f"{d:.1e}" for d in diff.tolist()))
print("greedy choices that differ:", int((other.argmax(-1) != ref.argmax(-1)).sum()), "of", STEPS)

# One decode step's inputs to every layer, then each layer alone under both backends.
inputs = {}
hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: inputs.__setitem__(name, args[0].detach().clone()))
         for n, m in mods.items()]
rsparse.set_backend(TRITON)
with torch.no_grad():
    dec = bench._Decoder(model, model, bench._static_cache(model, prompt.shape[1] + 2))
    tok = dec.prefill(prompt)
    inputs.clear()
    dec.step(tok)
for h in hooks:
    h.remove()
worst = []
with torch.no_grad():
    for n, x in inputs.items():
        m = mods[n]
        rsparse.set_backend(TRITON)
        a = m(x)
        rsparse.set_backend("torch")
        b = m(x)
        worst.append(rel(a, b))
print(f"per-layer relative difference, one decode step, {len(worst)} layers: max {max(worst):.2e}, median {sorted(worst)[len(worst)//2]:.2e}")


def capture_prefill(backend_name):
    """Every layer's input during the prompt's prefill under one backend (hooks: layer-by-layer path)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: seen.setdefault(name, args[0].detach().clone()))
             for n, m in mods.items()]
    rsparse.set_backend(backend_name)
    with torch.no_grad():
        bench._Decoder(model, model, bench._static_cache(model, prompt.shape[1] + 2)).prefill(prompt)
    for h in hooks:
        h.remove()
    return seen


# The prefill's inputs (T = 8 rows), each layer alone and each group fused, under both backends.
pre = capture_prefill(TRITON)
print("prefill rows per call:", next(iter(pre.values())).reshape(-1, next(iter(mods.values())).in_features).shape[0])
alone, fused = [], []
with torch.no_grad():
    for n, x in pre.items():
        rsparse.set_backend(TRITON)
        a = mods[n].forward_alone(x)
        rsparse.set_backend("torch")
        alone.append(rel(a, mods[n].forward_alone(x)))
    for names in linked_groups(model):
        x = pre[names[0]]
        rsparse.set_backend(TRITON)
        ys = fused_forward(x, [mods[k] for k in names])
        rsparse.set_backend("torch")
        fused += [rel(y, mods[k].forward_alone(x)) for y, k in zip(ys, names)]
print(f"prefill (T = 8) per layer, alone: max {max(alone):.2e}, median {sorted(alone)[len(alone)//2]:.2e} "
      f"({len(alone)} layers); fused groups: max {max(fused, default=0):.2e} ({len(fused)} layers)")

# Where the masks part when each backend runs the whole prefill (module order = model order).
other = capture_prefill("torch")
first, flips = None, 0
for n, x in pre.items():
    m = mods[n]
    ma = x.float().abs() * m.c > m.tau
    mb = other[n].float().abs() * m.c > m.tau
    d = int((ma != mb).sum())
    flips += d
    if d and first is None:
        first = (n, d, rel(other[n], x))
    if n.endswith("layers.0.self_attn.q_proj") or n.endswith("layers.29.mlp.down_proj"):
        print(f"  {n}: input rel diff {rel(other[n], x):.2e}, mask decisions differing {d} of {ma.numel()}")
print("first layer whose mask differs between the backends' prefills:", first, "; total differing decisions:", flips)

# The same greedy comparison with the prefill dense: only the single-token steps run sparse.
for m in mods.values():
    m.decode_cutoff = 4
rsparse.set_backend(TRITON)
ref_toks, ref = greedy_logits(model, prompt, STEPS)
rsparse.set_backend("torch")
toks, _ = greedy_logits(model, prompt, STEPS)
_, forced = greedy_logits(model, prompt, STEPS, forced=ref_toks)
same = (toks == ref_toks).float().mean().item()
firstdiff = int((toks != ref_toks).int().argmax()) if same < 1 else None
step_diff = (forced - ref).abs().amax(-1)
print(f"dense prefill: torch vs triton greedy agreement {same:.3f} (first difference at {firstdiff}); "
      f"teacher-forced max|dlogit| first/median/max: {step_diff[0]:.1e} {step_diff.median():.1e} {step_diff.max():.1e}")
for m in mods.values():
    m.decode_cutoff = 8
rsparse.set_backend("auto")
