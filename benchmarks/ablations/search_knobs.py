"""Ablation (issue 4): does the search gain from more evaluations or per-depth-bin knobs?

    python benchmarks/ablations/search_knobs.py 0.5 64 5 [curve]   # target, evaluations, depth bins

Prints the search's held-out KL and the strict held-out perplexity (8 x 512 BoolQ tokens) of
SmolLM2-135M sparsified with 16 x 256 BoolQ calibration tokens. Result in benchmarks/NOTES.md.
"""
import copy, logging, sys, time
import torch
import rsparse
from rsparse import search
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

logging.basicConfig(level=logging.INFO, format="%(message)s")
target, evals, bins = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
curve = len(sys.argv) > 4 and sys.argv[4] == "curve"
search.DEPTH_BINS, search.CURVE_KNOB = bins, curve
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False,
                 config=rsparse.RSparseConfig(search_evaluations=evals))
print(f"target {target} evals {evals} depth bins {bins} curve {curve}: sparsify {time.time()-t:.0f}s "
      f"ppl {perplexity(sp, held, protocol='strict'):.2f}", flush=True)
