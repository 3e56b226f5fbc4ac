"""Ablation (issue 4, twenty-eighth session): thresholds relative to each token's input scale.

The shipped rule keeps channel ``j`` of token ``t`` when ``|x_tj| * c_j > tau``: one absolute threshold
per linear, so a token with a large input (the attention output and the gated MLP product are not
normalised; the first position's ``down_proj`` input is thousands of times the median) keeps many
channels and a small one few.  Here the score is divided by the token's RMS over the channels,
``|x_tj| * c_j / rms(x_t) > tau``: each token keeps the channels that carry a large share of *its own*
input, and its relative output error, not its absolute one, sets what it drops.

The script patches the three places that form the score (calibration histograms, the mask of the
reference op, the inactive inputs' second moments) and then runs `search.score_variant`, i.e. the
model, calibration, seed and 64 held-out windows of `benchmarks/search_paired.py`, so the result
compares window by window with the shipped rule run the same way (``relative`` 0 below).  CPU only:
the Triton kernels keep the absolute rule.

    OMP_NUM_THREADS=1 python benchmarks/ablations/relative_threshold.py 0.5 1 none out.json
    OMP_NUM_THREADS=1 python benchmarks/ablations/relative_threshold.py 0.5 0 none base.json

Arguments: target, relative (1 or 0), search ("none": uniform budgets, rho 1; "auto": the default
search), the JSON to write.  Results: benchmarks/NOTES.md, "Twenty-eighth session".
"""
import json
import os
import sys
from pathlib import Path

import torch

import rsparse
import rsparse.calibrate
import rsparse.install
import rsparse.ops
import rsparse.ops.reference as reference

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

target, relative, how, out = float(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], Path(sys.argv[4])
CALLS = {"mask": 0, "hist": 0}


def token_scale(x: torch.Tensor) -> torch.Tensor:
    """The RMS of each token's input over its channels (fp32, keepdim), floored away from zero."""
    return x.float().square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


if relative:
    absolute_mask = reference.active_mask
    absolute_hists = rsparse.calibrate.score_histograms

    def relative_mask(x, c, tau):
        CALLS["mask"] += 1
        return x.abs().float() / token_scale(x) * c > tau

    def relative_hists(inputs, channel_weights, where="", column_norms=None):
        # The histograms bin |x| * c (and the energy (x * ||W_j||)^2): give them x / rms(x), so the bins are
        # the relative scores; the energy is then each token's relative output error, which is what this rule
        # trades (the allocation prices it as a relative error anyway).
        CALLS["hist"] += 1
        return absolute_hists([x.float() / token_scale(x) for x in inputs], channel_weights, where, column_norms)

    reference.active_mask = relative_mask  # sparse_linear_reference looks it up in its module
    rsparse.ops.active_mask = relative_mask  # calibrate.inactive_second_moments imports it from rsparse.ops
    rsparse.install.score_histograms = relative_hists  # install imported the function by name
    rsparse.calibrate.score_histograms = relative_hists

torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
name = f"{'relative' if relative else 'absolute'}/{how}"
search.score_variant(model, held, calib, meta, target, name, out, extra={"calls": CALLS}, search=how)
print("patched calls:", json.dumps(CALLS), flush=True)
if relative and not (CALLS["mask"] and CALLS["hist"]):
    sys.exit("the patches were never reached: the figures above measure the shipped rule")
