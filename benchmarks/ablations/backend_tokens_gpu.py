"""Issue 6, acceptance 2 on the GPU, quickly: eager greedy tokens of SmolLM2-135M (fp32) under the Triton
and the PyTorch backend, on the test's prompt and the first 8 tokens of held-out BoolQ passages.

    PYTHONPATH=src:... python benchmarks/ablations/backend_tokens_gpu.py [ROWS_DUMP] [PASSAGES]

The model is sparsified as `test_gpu_smollm2_triton_agrees_with_torch_per_layer` does it (0.5, default
search, column-norm score, 4 x 64 random calibration tokens). Prints a timestamp with every line, so a
call cut short by its time limit still shows how far it got. ROWS_DUMP as in `backend_agreement.py`.
"""
import sys
from pathlib import Path
import time

import torch

import rsparse
import rsparse.eval as rsparse_eval
from rsparse.bench import decode_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accuracy_from_dump import use_dump  # noqa: E402  (the dump reader of `accuracy_from_dump.py --write` files)

start = time.perf_counter()


def say(*a):
    print(f"[{time.perf_counter() - start:6.1f}s]", *a, flush=True)


if len(sys.argv) > 1 and sys.argv[1] != "-":
    use_dump(sys.argv[1])
n_passages = int(sys.argv[2]) if len(sys.argv) > 2 else 8

model, tokenizer = rsparse_eval.load_offline_model(torch.float32)
model = model.cuda()
say("loaded")
calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", show_progress=False)
say("sparsified; layers with a rank:", sum(1 for m in rsparse.nn.rsparse_modules(model).values() if m.rank))
prompts = {"test prompt": tokenizer("The capital of France is a city that", return_tensors="pt").input_ids}
for i, passage in enumerate(rsparse_eval.boolq_passages("heldout")[:n_passages]):
    prompts[f"passage {i}, 8 tokens"] = tokenizer(passage, return_tensors="pt").input_ids[:, :8]
identical = 0
for name, prompt in prompts.items():
    out = {}
    for backend in ("triton", "torch"):
        rsparse.set_backend(backend)
        out[backend] = decode_tokens(model, prompt.cuda(), 64)
    rsparse.set_backend("auto")
    same = out["triton"] == out["torch"]
    identical += bool(same.all())
    first = None if bool(same.all()) else int((~same).int().argmax())
    say(f"{name}: agreement {same.float().mean().item():.3f} of 64 tokens, first difference {first}")
say(f"{identical} of {len(prompts)} prompts identical over 64 tokens")
