"""Ablation (issues 4 and 6): how far a rounding-level difference travels in a sparse model, per score rule.

    python benchmarks/ablations/rounding_sensitivity.py 0.5 rsparse      # target, score rule ("dense": no sparsity)

A sparse layer keeps channel j when ``|x_j|·c_j > tau``; a rounding difference of 1e-7 flips the
channels that sit that close to the threshold. This script measures what such flips do end to end.
SmolLM2-135M (fp32) is sparsified with the default search under the given score rule (16 x 256 BoolQ
calibration tokens, seed 0). For four held-out BoolQ prompts of 32 tokens, greedy decoding with one
CPU thread gives 64 reference tokens; the same model is then run with two threads (other BLAS
rounding) on the *same* tokens (teacher forcing), and the script prints, per prompt, the largest
logit difference at each step: the first step where it exceeds 1e-2, its median from then on, and
how many of the 64 greedy choices differ. Result: benchmarks/NOTES.md, budget search notes.
"""
import sys

import torch

import rsparse
from rsparse.eval import boolq_passages, load_offline_model, text_windows
from teacher_forcing import greedy_logits

target, score = float(sys.argv[1]), sys.argv[2]
STEPS = 64
torch.manual_seed(0)
model, tok = load_offline_model()
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
prompts = text_windows(boolq_passages("heldout"), tok, 32, 4)
torch.set_num_threads(2)
if score == "dense":  # the reference: the same comparison without sparsity
    print("dense model", flush=True)
else:
    rsparse.sparsify(model, target, calibration=calib, seed=0, show_progress=False, score=score)
    print(f"target {target}, score {model.rsparse_config.score}", flush=True)


for p in range(prompts.shape[0]):
    prompt = prompts[p : p + 1]
    torch.set_num_threads(1)
    ref_toks, ref = greedy_logits(model, prompt, STEPS)
    torch.set_num_threads(2)
    _, other = greedy_logits(model, prompt, STEPS, forced=ref_toks)
    diff = (other - ref).abs().amax(-1)
    big = (diff > 1e-2).nonzero()
    first = int(big[0]) if len(big) else None
    after = f"{diff[first:].median():.3g}" if first is not None else "-"
    flips = int((other.argmax(-1) != ref.argmax(-1)).sum())
    print(f"prompt {p}: first step with max|dlogit| > 1e-2: {first}; median from there {after}; "
          f"max {diff.max():.3g}; greedy choices that differ {flips}/{STEPS}", flush=True)
