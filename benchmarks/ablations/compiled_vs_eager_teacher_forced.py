"""Ablation (issue 6, acceptance 2): where a compiled decode step parts from eager on the sparse SmolLM2.

    python benchmarks/ablations/compiled_vs_eager_teacher_forced.py auto      # score rule: auto, rsparse, magnitude

The setting of `tests/test_decode.py::test_smollm2_compiled_greedy_equals_eager` (fp32, one thread, 4 x 64
random calibration tokens, target 0.5, the test's prompt), with the score rule given. Eager greedy decoding
gives 64 tokens; the compiled (``aot_eager``) step is then run teacher-forced on those tokens, and every step
prints the largest logit difference, eager's gap between its two best logits, and whether the argmax differs.
Logs: results/compiled_vs_eager_teacher_forced_{auto,rsparse}.log; notes: benchmarks/NOTES.md.
"""
import sys, torch
import rsparse
from rsparse import bench
from rsparse.eval import load_offline_model
from teacher_forcing import greedy_logits

torch.set_num_threads(1)
score = sys.argv[1]
model, tokenizer = load_offline_model(torch.float32)
calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False, score=score)
print("score chosen", model.rsparse_config.score, flush=True)
prompt = tokenizer("The capital of France is a city that", return_tensors="pt").input_ids

eager_toks, eager_logits = greedy_logits(model, prompt, 64)
step = bench.compile_decode_step(model, backend="aot_eager")
comp_toks, comp_logits = greedy_logits(model, prompt, 64, step=step, forced=eager_toks)
top2 = eager_logits.topk(2, -1).values
gap = (top2[:, 0] - top2[:, 1])
d = (comp_logits - eager_logits).abs().max(-1).values
for i in range(64):
    flag = "" if comp_logits[i].argmax() == eager_logits[i].argmax() else "  <-- argmax differs"
    print(f"step {i:2d} max|dlogit| {d[i]:.3e}  eager top2 gap {gap[i]:.3e}{flag}")
print("min gap", gap.min().item(), "at", gap.argmin().item())
