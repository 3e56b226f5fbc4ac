"""Ablation (issue 4): the search's Fisher prices taken at the sparse operating point instead of the dense one.

The search prices each linear's relative output error by ``Σ_t ||g_t||² ||y_t||² / out``, with ``g`` and ``y``
from one backward pass of the *dense* model (`rsparse.search.output_sensitivities`). When every layer is
sparse, errors compound: how much one more unit of error in a late layer costs may differ from what the
dense model says. This script patches the search so that the prices come from the model with uniform
budgets installed (magnitude score, rho 1, calibrated on the search's own calibration tokens), every linear
computing the differentiable PyTorch reference (`rsparse.ops.reference.sparse_linear_reference`), tokens
sampled from that sparse model's distribution; ``MIX`` in (0, 1] takes the geometric mix
``dense^(1 - MIX) · sparse^MIX`` (default 1: the sparse point only). Everything else is the default search,
and the run is scored like `search_variant.py` (64 held-out windows, per-window NLL, the same JSON layout):

    OMP_NUM_THREADS=1 MIX=1 python benchmarks/ablations/search_sparse_prices.py 0.5 sparse-prices out.json

Results: benchmarks/NOTES.md, budget search notes ("Tried in the twenty-third session").
"""
import logging
import math
import os
import sys
from pathlib import Path

import torch

import rsparse
import rsparse.search as search_module
from rsparse.budget import uniform_budgets
from rsparse.fuse import set_fusion
from rsparse.install import install_layers, restore
from rsparse.nn import RSparseLinear
from rsparse.ops.reference import sparse_linear_reference

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

logging.basicConfig(level=logging.WARNING)
logging.getLogger("rsparse.search").setLevel(logging.INFO)
target, name, out = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
MIX = float(os.environ.get("MIX", "1"))
dense_prices = search_module.output_sensitivities
original_search = search_module.search_budgets
calibration: list[torch.Tensor] = []
record: dict = {}


def differentiable_forward(self, x, residual=None):
    weight_t, c, tau, lowrank_in, lowrank_out, bias = self._op_tensors()[:6]
    y = sparse_linear_reference(x.reshape(-1, self.in_features), weight_t, c, tau, lowrank_in, lowrank_out, bias)
    y = y.view(*x.shape[:-1], self.out_features)
    return y if residual is None else residual + y


def sparse_point_prices(model, targets, batches, *, seed):
    logprobs, dense = dense_prices(model, targets, batches, seed=seed)
    shapes = {n: (m.in_features, m.out_features) for n, m in targets.items()}
    cfg = rsparse.RSparseConfig(score="magnitude", rho=1.0)
    replaced, _ = install_layers(model, targets, calibration, uniform_budgets(shapes, target, 1.0), cfg, show_progress=False)
    old = RSparseLinear.forward_alone
    try:
        set_fusion(model, False)  # every linear through its own (patched) forward, so the hooks see each call
        RSparseLinear.forward_alone = differentiable_forward
        sparse_targets = {n: model.get_submodule(n) for n in targets}
        _, sparse = dense_prices(model, sparse_targets, batches, seed=seed)
    finally:
        RSparseLinear.forward_alone = old
        restore(model, replaced)
    mixed = {n: math.exp((1 - MIX) * math.log(max(dense[n], 1e-30)) + MIX * math.log(max(sparse[n], 1e-30))) for n in dense}
    ratio = sorted(sparse[n] / dense[n] for n in dense if dense[n] > 0)
    record["price_ratio_sparse_over_dense"] = {"min": ratio[0], "median": ratio[len(ratio) // 2], "max": ratio[-1]}
    record["prices"] = {n: [dense[n], sparse[n]] for n in dense}
    logging.getLogger("rsparse.search").info("sparse/dense price ratio: min %.3f median %.3f max %.3f", *record["price_ratio_sparse_over_dense"].values())
    return logprobs, mixed


def search_with_calibration(model, targets, batches, cfg, **kw):
    calibration[:] = batches
    return original_search(model, targets, batches, cfg, **kw)


search_module.output_sensitivities = sparse_point_prices
search_module.search_budgets = search_with_calibration
import rsparse.api  # noqa: E402

if getattr(rsparse.api, "search_budgets", None) is original_search:
    rsparse.api.search_budgets = search_with_calibration

torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
record["mix"] = MIX
search.score_variant(model, held, calib, meta, target, name, out, record)
assert calibration, "the patched search did not run"
