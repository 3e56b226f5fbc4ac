"""Issue 6, acceptance 2: how often the Triton and PyTorch backends give the same 64 greedy tokens (fp32, GPU).

    PYTHONPATH=src:... python benchmarks/ablations/backend_agreement.py [ROWS_DUMP] [SEARCH]

SmolLM2-135M sparsified at 0.5 as `test_gpu_smollm2_triton_agrees_with_torch_per_layer` does;
prompts: the test's own (8 tokens) and the first 8 and the first 16 tokens of 8 held-out BoolQ
passages. With ``decode_cutoff = 8`` an 8-token prompt's prefill runs sparse, a 16-token one dense
(as issue 6 describes decoding: prefill dense, decode steps sparse). Eager decoding under each
backend; prints, per prompt, the share of equal tokens and the first position that differs.
ROWS_DUMP: `benchmarks/accuracy_from_dump.py --write`'s file, where pyarrow is missing ("-": none);
SEARCH: `sparsify`'s ``search`` (default ``"auto"``, the test's setting; ``"none"``: uniform budgets).
"""
import sys
from pathlib import Path

import torch

import rsparse
import rsparse.eval as rsparse_eval
from rsparse.bench import decode_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accuracy_from_dump import use_dump  # noqa: E402  (the dump reader of `accuracy_from_dump.py --write` files)

SEARCH = sys.argv[2] if len(sys.argv) > 2 else "auto"
if len(sys.argv) > 1 and sys.argv[1] != "-":
    use_dump(sys.argv[1])

model, tokenizer = rsparse_eval.load_offline_model(torch.float32)
model = model.cuda()
calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", search=SEARCH, show_progress=False)
print("search:", SEARCH, "; layers with a rank:", sum(1 for m in rsparse.nn.rsparse_modules(model).values() if m.rank))
prompts = {"test prompt": tokenizer("The capital of France is a city that", return_tensors="pt").input_ids}
for i, passage in enumerate(rsparse_eval.boolq_passages("heldout")[:8]):
    ids = tokenizer(passage, return_tensors="pt").input_ids
    prompts[f"passage {i}, 8 tokens"] = ids[:, :8]
    prompts[f"passage {i}, 16 tokens"] = ids[:, :16]
summary = {}
for name, prompt in prompts.items():
    out = {}
    for backend in ("triton", "torch"):
        rsparse.set_backend(backend)
        out[backend] = decode_tokens(model, prompt.cuda(), 64)
    same = out["triton"] == out["torch"]
    first = None if bool(same.all()) else int((~same).int().argmax())
    agreement = same.float().mean().item()
    summary[name] = (agreement, first)
    print(f"{name} ({prompt.shape[1]} tokens, prefill {'sparse' if prompt.shape[1] <= 8 else 'dense'}): "
          f"agreement {agreement:.3f}, first difference {first}", flush=True)
rsparse.set_backend("auto")
for kind in ("8 tokens", "16 tokens"):
    rows_ = [v for k, v in summary.items() if k.endswith(kind)]
    print(f"passages, {kind}: {sum(1 for a, _ in rows_ if a == 1.0)} of {len(rows_)} prompts identical over 64 tokens")
