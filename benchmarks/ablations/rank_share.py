"""Ablation (issue 4): the searched budgets with and without the low-rank path, per target.

    OMP_NUM_THREADS=1 python benchmarks/ablations/rank_share.py 0.6 1.0    # target, rho (or "auto")

Sparsifies SmolLM2-135M with the default search (16 x 256 BoolQ calibration tokens, seed 0) and
``rho`` fixed (1.0: no low-rank path anywhere, the search only allocates densities) or left to the
search (``auto``, the default), and prints the strict held-out perplexity (8 x 512 BoolQ tokens).
Result: benchmarks/NOTES.md, budget search notes.
"""
import copy, sys, time, torch
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1])
rho = None if sys.argv[2] == "auto" else float(sys.argv[2])
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, rho=rho)
ranks = sum(1 for m in rsparse.nn.rsparse_modules(sp).values() if m.rank > 0)
print(sys.argv[1:], "sparsify", round(time.time() - t), "s,", ranks, "layers with rank", flush=True)
print(sys.argv[1:], "ppl", perplexity(sp, held, protocol="strict"), flush=True)
