"""Ablation driver (issue 4): one search variant at one target, scored like `benchmarks/search_paired.py`.

    OMP_NUM_THREADS=1 python benchmarks/ablations/search_variant.py 0.4 auto/rho1 out.json '{"rho": 1.0}'
    OMP_NUM_THREADS=1 RSPARSE_OBJECTIVE=klnll python benchmarks/ablations/search_variant.py 0.4 auto/klnll out.json '{}'

Arguments: target, a name for the run, the JSON to write, and `sparsify` keyword arguments as JSON
(``"config"``: `RSparseConfig` fields; ``"calib_samples"``: calibration windows, 16 by default;
``"calib_skip"``: skip that many calibration windows first, for another draw of calibration text).
The model, calibration windows (16 x 256 BoolQ tokens), seed and the 64 held-out windows x 512
tokens are `search_paired.py`'s, and the JSON has its layout (per-window NLL), so runs compare
window by window with `search_paired_run1.json`. The variants of the eleventh and twelfth sessions ran with one
of three patches of `src/rsparse/search.py` applied (this folder; none is in the package):

* `search_objective_env.patch`: environment switches. ``RSPARSE_OBJECTIVE=nll`` scores candidates by the
  held-out tokens' NLL, ``klnll`` by KL plus the NLL increase over dense (a target half the dense
  distribution, half the true token); ``RSPARSE_RANK_TEST=32`` drops the refined result's low-rank paths
  unless they lower the KL by two standard errors (paired over 32-token blocks) against the same
  knobs without rank; ``RSPARSE_RANK_TEST_RULES=1`` also tests each rule's table allocation.
* `search_rank_test.patch`: the second form written as the search's step 4 (tests at both places).
* `search_heldout_residual.patch` (twelfth session): the tables price the rank by the residual of factors fitted on
  one half of the calibration sequences and measured on the other (``RSPARSE_NO_RANK_KNOB=1`` also drops the
  refinement's rank knob).

The search's log (`rsparse.search` at INFO: the rule chosen, the KL, the knobs) goes to stderr.

Results: benchmarks/NOTES.md, budget search notes, "Tried in the eleventh session" and "in the twelfth session".
"""
import json
import logging
import os
import sys
from pathlib import Path

import torch

import rsparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

logging.basicConfig(level=logging.WARNING)
logging.getLogger("rsparse.search").setLevel(logging.INFO)
target, name, out = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
torch.manual_seed(0)
samples, skip = extra.pop("calib_samples", 16), extra.pop("calib_skip", 0)
model, held, calib, meta = search.load_data(512, 64, samples + skip, 0)
if skip:  # another draw of calibration text: the windows after the first `skip`
    calib = calib[skip:]
    meta["calibration"] = f"{calib.shape[0]} x 256 tokens of BoolQ passages (first half), after the first {skip} windows"
cfg = rsparse.RSparseConfig(**extra.pop("config", {}))
search.score_variant(model, held, calib, meta, target, name, out, config=cfg, **extra)
