"""Ablation (issue 4): the share of calibration sequences that score candidate budgets.

    OMP_NUM_THREADS=1 python benchmarks/ablations/search_holdout.py 0.5     # default 0.25

Sparsifies SmolLM2-135M at target 0.5 with the default search (16 x 256 BoolQ calibration
tokens, seed 0, ``RSparseConfig(search_holdout=...)``) and prints the strict held-out
perplexity (8 x 512 BoolQ tokens).  Result: benchmarks/NOTES.md, budget search notes.
"""
import copy, sys, time, torch
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
frac = float(sys.argv[1])
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, 0.5, calibration=calib, seed=0, show_progress=False, config=rsparse.RSparseConfig(search_holdout=frac))
print(sys.argv[1:], "sparsify", round(time.time() - t), "s", flush=True)
print(sys.argv[1:], "ppl", perplexity(sp, held, protocol="strict"), flush=True)
