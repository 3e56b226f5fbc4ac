"""Ablation (issue 4): score |x_j| * ||W[:, j]||^alpha under the default search.
    OMP_NUM_THREADS=1 python benchmarks/ablations/score_exponent.py 0.6 0.5      # target, alpha

alpha 1 is the shipped "rsparse" rule, 0 the "magnitude" one. Result: benchmarks/NOTES.md, budget search notes.
"""
import copy, sys, time, torch
import rsparse, rsparse.install as inst
from rsparse.nn import column_norms
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
target, alpha = float(sys.argv[1]), float(sys.argv[2])
inst._channel_weights = lambda linear, score: column_norms(linear.weight).pow(alpha)
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False)
print(sys.argv[1:], "sparsify", round(time.time() - t), "s ppl", perplexity(sp, held, protocol="strict"), flush=True)
