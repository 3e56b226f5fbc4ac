"""Ablation (issue 4): Fisher prices scaled by how each linear's measured output error lines up
with the log-likelihood gradient (`rsparse.search.error_alignment`, switch `ALIGNED_PRICES`).

    OMP_NUM_THREADS=1 python benchmarks/ablations/aligned_prices.py 0.5 shipped
    OMP_NUM_THREADS=1 python benchmarks/ablations/aligned_prices.py 0.5 aligned
    OMP_NUM_THREADS=1 python benchmarks/ablations/aligned_prices.py 0.5 sqrt      # alignment ** 0.5

Sparsifies SmolLM2-135M with the default search (16 x 256 BoolQ calibration tokens, seed 0) and
prints the strict held-out perplexity (8 x 512 BoolQ tokens).  Ran at commit a0499ee; the
switch was removed afterwards (benchmarks/NOTES.md, budget search notes).
"""
import copy, sys, time, torch
import rsparse
from rsparse import search
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
search.ALIGNED_PRICES = sys.argv[2] in ("aligned", "sqrt")
search.ALIGNED_EXPONENT = 0.5 if sys.argv[2] == "sqrt" else 1.0
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
rho = None if len(sys.argv) < 4 else float(sys.argv[3])
sp = copy.deepcopy(model)
t = time.time()
res = rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, rho=rho)
print(sys.argv[1:], "sparsify", round(time.time() - t), "s", flush=True)
print(sys.argv[1:], "ppl", perplexity(sp, held, protocol="strict"), flush=True)
