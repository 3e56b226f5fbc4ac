"""Ablation (issue 4): the magnitude score (c = 1) in some input groups, the column-norm score elsewhere.

    OMP_NUM_THREADS=1 python benchmarks/ablations/score_per_group.py 0.6 qkv,o    # target, groups with c = 1

Under the default search, the magnitude score beat rsparse's column-norm score at target 0.6 (66.28
against 70.23, NOTES "Acceptance 1 at 0.4 and 0.6"), while the tables' error proxy (dropped energy
``(x_j·||W[:, j]||)²``) always prefers the column norms. This asks whether that comes from one kind
of projection: the linears of the named input groups (``qkv``, ``o``, ``gateup``, ``down``; ``none``
or ``all``) get ``c = 1`` in every pass (the search's tables, its evaluations and the final install,
through the one function that builds ``c``), the others their column norms. ``baseline`` runs
acceptance 1(c)'s searched magnitude baseline instead (``score="magnitude"``, rho fixed to 1), and
``rsparse`` the column-norm score given explicitly (the default before ``score="auto"``); with
``none`` the default search runs as it is (``score="auto"`` since it exists). Default search otherwise
(SmolLM2-135M, 16 x 256 BoolQ calibration tokens, seed 0); prints the strict held-out perplexity
(8 x 512 BoolQ tokens). Result: benchmarks/NOTES.md, budget search notes.
"""
import copy
import sys
import time

import torch

import rsparse
import rsparse.install
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows

GROUPS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gateup",
          "up_proj": "gateup", "down_proj": "down"}

torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
target = float(sys.argv[1])
baseline = sys.argv[2] == "baseline"  # acceptance 1(c): the magnitude score, rho 1, rsparse's search (no patch)
column_norms = sys.argv[2] == "rsparse"  # score="rsparse" given explicitly (the default before score="auto")
chosen = (set(GROUPS.values()) if sys.argv[2] == "all"
          else set() if sys.argv[2] in ("none", "baseline", "rsparse") else set(sys.argv[2].split(",")))
assert chosen <= set(GROUPS.values()), chosen
sp = copy.deepcopy(model)
group_of = {id(m): GROUPS[name.rsplit(".", 1)[-1]] for name, m in sp.named_modules() if name.rsplit(".", 1)[-1] in GROUPS}
original = rsparse.install._channel_weights
calls = {"magnitude": 0, "rsparse": 0}


def channel_weights(linear, score):
    rule = "magnitude" if group_of[id(linear)] in chosen else score
    calls[rule] += 1
    return original(linear, rule)


rsparse.install._channel_weights = channel_weights  # looked up in rsparse.install's globals at each call
t = time.time()
if baseline:
    rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, score="magnitude", rho=1.0)
elif column_norms or chosen:
    # One table pass whose c the patch sets per group (with score="auto" the search would also run a
    # pass and an evaluator for the other rule, which this patch would defeat).
    rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False, score="rsparse")
else:
    rsparse.sparsify(sp, target, calibration=calib, seed=0, show_progress=False)
ones = sum(1 for m in rsparse.nn.rsparse_modules(sp).values() if bool((m.c == 1).all()))
print(sys.argv[1:], "sparsify", round(time.time() - t), "s; c = 1 in", ones, "of", len(rsparse.nn.rsparse_modules(sp)),
      "linears; rule calls", calls, flush=True)
print(sys.argv[1:], "ppl", perplexity(sp, held, protocol="strict"), flush=True)
