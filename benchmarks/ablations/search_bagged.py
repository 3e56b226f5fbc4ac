"""Ablation (issue 4): the search run once per held-out fold of the calibration sequences, budgets averaged.

    OMP_NUM_THREADS=2 RSPARSE_FOLDS=4 python benchmarks/ablations/search_bagged.py 0.5 auto/bagged4 out.json

The search scores candidates on the last quarter of the calibration sequences and fits its tables on the rest; one
draw of calibration text moved the held-out perplexity by about ±3.5 % (benchmarks/NOTES.md, twelfth and thirteenth
sessions). Here the search runs ``RSPARSE_FOLDS`` times, each time with another quarter held out (the sequences
rotated so that split_holdout's last quarter is that fold), and the per-layer sparsity and sparse share are averaged
over the folds that chose the majority score rule. Every fold meets the model-level target exactly, so their mean
does too. The thresholds are then fitted on all calibration sequences as in the default. Costs ``RSPARSE_FOLDS``
searches.

Arguments and output as `search_variant.py`; the patch lives in this script, the package is unchanged.
"""
import collections
import logging
import os
import runpy
import sys

import torch

import rsparse.api as api
from rsparse.budget import layer_budget, model_sparsity

FOLDS = int(os.environ.get("RSPARSE_FOLDS", "4"))
log = logging.getLogger("rsparse.search")
_search = api.search_budgets


def _bagged(model, targets, batches, cfg, *, show_progress=True):
    rows = torch.cat(batches)
    size = batches[0].shape[0]
    results = []
    for fold in range(FOLDS):
        shift = round(rows.shape[0] * (fold + 1) / FOLDS)  # fold f's sequences end up last (held out)
        rotated = torch.roll(rows, -shift % rows.shape[0], dims=0)
        result = _search(model, targets, list(rotated.split(size)), cfg, show_progress=show_progress)
        log.info("search_bagged: fold %d, rule %s, KL %.4f", fold, result.score, result.kl)
        results.append(result)
    rule = collections.Counter(r.score for r in results).most_common(1)[0][0]
    chosen = [r for r in results if r.score == rule]
    budgets = {}
    for name, b in chosen[0].budgets.items():
        s = sum(r.budgets[name].s for r in chosen) / len(chosen)
        rho = sum(r.budgets[name].rho for r in chosen) / len(chosen)
        budgets[name] = layer_budget(b.in_features, b.out_features, s, rho)
    log.info("search_bagged: %d of %d folds chose %s; mean budgets at model sparsity %.4f, %d linears with a rank",
             len(chosen), FOLDS, rule, model_sparsity(budgets.values()), sum(b.r > 0 for b in budgets.values()))
    out = chosen[0]
    out.budgets, out.kl = budgets, sum(r.kl for r in chosen) / len(chosen)  # kl: the folds' mean, not re-scored
    return out


api.search_budgets = _bagged
sys.argv = [os.path.join(os.path.dirname(__file__), "search_variant.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
