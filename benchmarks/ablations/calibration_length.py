"""Ablation (issue 4): calibration sequence length, 16 x 256 against 8 x 512 tokens (the same count).

The strict held-out windows are 512 tokens long while calibration sequences were 256; positions past
256 never reach the thresholds' statistics. Arguments: tokens per sequence, sequences, search
(``none`` or ``auto``), target.

    OMP_NUM_THREADS=1 python benchmarks/ablations/calibration_length.py 512 8 auto 0.5

Result in benchmarks/NOTES.md (budget search notes, sixth session of 2026-12-01).
"""
import copy, sys, time, torch
import rsparse
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
seq, n, search = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
target = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
calib = text_windows(boolq_passages("calibration"), tok, seq, n)
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, search=search,
                 rho=1.0 if search == "none" else None)
print(f"seq {seq} n {n} search {search} target {target}: sparsify {time.time()-t:.0f}s", flush=True)
print(f"seq {seq} n {n} search {search} target {target}: ppl {perplexity(sp, held, protocol='strict'):.2f}", flush=True)
