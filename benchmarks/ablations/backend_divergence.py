"""Issue 6, acceptance 2: where the Triton and PyTorch backends part on SmolLM2 (fp32, GPU).

    PYTHONPATH=src:... python benchmarks/ablations/backend_divergence.py

Sparsifies SmolLM2-135M at 0.5 as `test_gpu_smollm2_triton_compiled_equals_eager_and_torch` does,
decodes 64 greedy tokens with the Triton backend (eager), then runs both backends teacher-forced
on those tokens and prints each step's largest logit difference, and for one decode step every
RSparseLinear's output under both backends on the same captured input (relative difference).
Rounding-level differences (1e-6 relative per layer) that grow only after a threshold flip are
the sparse model's sensitivity; a layer far above that would be a kernel bug.
"""
import os

import torch

import rsparse
from rsparse import bench
from rsparse.eval import load_offline_model
from rsparse.nn import rsparse_modules
from teacher_forcing import greedy_logits

DRY = os.environ.get("DRY") == "1"  # a CPU dry run of the script itself: "triton" means torch there
DEVICE = "cpu" if DRY else "cuda"
TRITON = "torch" if DRY else "triton"
model, tokenizer = load_offline_model(torch.float32)
model = model.to(DEVICE)
calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).to(DEVICE)
rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", show_progress=False)
mods = rsparse_modules(model)
print("layers with a rank:", sum(1 for m in mods.values() if m.rank > 0), "of", len(mods), flush=True)
prompt = tokenizer("The capital of France is a city that", return_tensors="pt").input_ids.to(DEVICE)
STEPS = 4 if DRY else 64


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
        worst.append(((a - b).norm() / b.norm().clamp_min(1e-30)).item())
rsparse.set_backend("auto")
print(f"per-layer relative difference, one decode step, {len(worst)} layers: max {max(worst):.2e}, median {sorted(worst)[len(worst)//2]:.2e}")
