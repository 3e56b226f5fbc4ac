"""Ablation (issue 4): searched (or uniform) perplexity at target 0.5 vs calibration size.

    python benchmarks/ablations/calibration_size.py 48 auto 32   # sequences x 256 tokens, search, evaluations

Prints the strict held-out perplexity (8 x 512 BoolQ tokens) of SmolLM2-135M sparsified with
that many BoolQ calibration sequences. Result in benchmarks/NOTES.md (budget search notes).
"""
import copy, sys, time, torch, logging
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
logging.basicConfig(level=logging.INFO, format="%(message)s")
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
n = int(sys.argv[1]); search = sys.argv[2]; evals = int(sys.argv[3]) if len(sys.argv) > 3 else 32
calib = text_windows(boolq_passages("calibration"), tok, 256, n)
sp = copy.deepcopy(model)
t = time.time()
cfg = rsparse.RSparseConfig(search_evaluations=evals)
rsparse.sparsify(sp, 0.5, calibration=calib, seed=0, show_progress=False, search=search, config=cfg, **({"rho": 1.0} if search == "none" else {}))
print(f"calib {n} search {search} evals {evals}: sparsify {time.time()-t:.0f}s ppl {perplexity(sp, held, protocol='strict'):.2f}", flush=True)
