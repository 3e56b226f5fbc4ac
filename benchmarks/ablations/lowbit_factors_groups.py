"""Ablation (issue 4, twenty-ninth session; the first form, before `RSparseConfig(factor_bits=4)`):
R-Sparse's low-rank path with its factors stored in ``bits`` bits, so the same bytes buy
``16 / (bits + 32 / group)`` times the rank.

Needs `factor_bytes_experiment.patch` (beside this file) applied to the library as of commit 3a34723:
it adds the switch ``rsparse.budget.FACTOR_BYTES`` that this script sets.  The library's own format
(`rsparse.factor_quant`, one range per component) is measured by `lowbit_factors.py`.

On SmolLM2 a bf16 low-rank path loses to plain channels at equal bytes (`NOTES.md`, acceptance 5), and a
low-bit copy of the whole weight for the dropped channels wins by far (`lowbit_rest.py`).  This sits in
between and stays inside the method: the path is still ``U_r S_r V_rᵀ x_Ā`` (activation-aware factors, as
shipped), only its factors are quantized row by row (``lowrank_in`` ``[in, r]`` in groups along ``r``,
``lowrank_out`` ``[r, out]`` in groups along ``out``; min/max, fp16 offset and range), dequantized in place.

Bytes per layer follow `DESIGN.md` §2 with the factors' bytes scaled by ``f = (bits + 32 / group) / 16``
(group 0: one offset and range per component, ``f = bits / 16``): a share ``q`` of the budget ``C = 1 - target``
goes to the factors, so ``k = (1 - q) C n`` channels and ``r = floor(q C m n / ((m + n) f))``.  The factors are
quantized when they are made (``lowrank_in`` transposed: one range per component and block of channels), so
the search's slices of the leading components are exact.

    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_factors_groups.py 0.5 0.3 4 64 out.json   # uniform, q 0.3
    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_factors_groups.py 0.5 auto 4 64 out.json  # searched

Arguments: model-level target, rank share q (or ``auto``: the default search), bits, group, JSON.  Strict
protocol, the calibration, seed and 64 held-out windows of `benchmarks/search_paired.py`.  CPU only.
"""
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import rsparse
from rsparse import install
from rsparse.eval import window_nll
from rsparse.nn import RSparseLinear

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

target, share, bits, group, out = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
searched = share == "auto"  # the default search decides each layer's (s, rho) with the cheaper factors
f = 1.0 if bits >= 16 else (bits + (32 / group if group else 0)) / 16  # group 0: one offset and range per component


def fake_quant_rows(a: torch.Tensor) -> torch.Tensor:
    """``a`` ``[n, m]`` quantized to ``bits`` per value in groups of ``group`` along each row, dequantized."""
    n, m = a.shape
    size = group or m
    pad = (-m) % size
    w = torch.nn.functional.pad(a.float(), (0, pad)).view(n, -1, size)
    lo, hi = w.amin(-1, keepdim=True).half().float(), w.amax(-1, keepdim=True).half().float()
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    q = ((w - lo) / scale).round().clamp(0, 2**bits - 1)
    return (q * scale + lo).view(n, -1)[:, :m].to(a.dtype)


errors = []
_factors = install._factors


def quantized_factors(weight, rank, second_moment, factorization):
    """The shipped factors, fake-quantized: one scale per rank component and block of channels (``lowrank_in``,
    transposed) or of outputs (``lowrank_out``), so the search's slices of the leading components stay exact."""
    lowrank_in, lowrank_out, residual = _factors(weight, rank, second_moment, factorization)
    if f < 1 and rank:
        product = lowrank_in.float() @ lowrank_out.float()
        lowrank_in, lowrank_out = fake_quant_rows(lowrank_in.t()).t().contiguous(), fake_quant_rows(lowrank_out)
        errors.append(((lowrank_in.float() @ lowrank_out.float() - product).norm() / product.norm()).item())
    return lowrank_in, lowrank_out, residual


install._factors = quantized_factors
rsparse.budget.FACTOR_BYTES = f  # the experiment's switch in budget.py / search.py (lowbit_factors.patch)
torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
sparse = copy.deepcopy(model)
started = time.perf_counter()
rsparse.sparsify(sparse, target, calibration=calib, seed=0, show_progress=False,
                 search="auto" if searched else "none", rho=None if searched else 1 - float(share))
seconds = time.perf_counter() - started
ranks = [m.rank for m in sparse.modules() if isinstance(m, RSparseLinear)]
bytes_ = sum(m.budget.k * m.out_features + f * m.rank * (m.in_features + m.out_features) for m in sparse.modules() if isinstance(m, RSparseLinear))
dense_bytes = sum(m.in_features * m.out_features for m in sparse.modules() if isinstance(m, RSparseLinear))
nll = window_nll(sparse, held).tolist()
name = ("searched" if searched else f"uniform, rank share {share}") + f", factors {bits}-bit" + ((f" g{group}" if group else " per component") if f < 1 else "")
run = {"method": name, "target": target, "share": share, "bits": bits, "group": group, "factor_bytes_per_value": f,
       "layers_with_rank": sum(r > 0 for r in ranks), "ranks_min_max": [min(ranks), max(ranks)],
       "read_share_of_dense": bytes_ / dense_bytes, "factor_rel_error_mean": sum(errors) / len(errors) if errors else None,
       "nll": nll, "sparsify_seconds": seconds}
out.write_text(json.dumps({"meta": meta, "runs": {f"{name}/target={target}": run}}))
print(name, target, "ranks", run["ranks_min_max"], "layers with rank", run["layers_with_rank"], "read", run["read_share_of_dense"], "ppl first 8", math.exp(sum(nll[:8]) / 8),
      "ppl 64", math.exp(sum(nll) / len(nll)), "factor error", run["factor_rel_error_mean"], flush=True)
