"""Issue 4, twenty-ninth session: the default search with 4-bit low-rank factors
(``RSparseConfig(factor_bits=4)``, `rsparse.factor_quant`) against the shipped bf16 factors.

Packed 4-bit factors cost a quarter of the bytes per rank (`DESIGN.md` §2 with ``f = factor_bits / 16``), so
the search can afford ranks that recover much of what the dropped channels carried.  Strict protocol, the
model, calibration, seed and 64 held-out windows of `benchmarks/search_paired.py`, so the JSON compares
window by window with `results/search_paired_run1.json` (`search_paired.py --report`).  CPU.

    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_factors.py 0.5 4 auto out.json   # searched
    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_factors.py 0.5 4 0.7 out.json    # uniform, rho 0.7

Arguments: model-level target, factor bits (16 or 4), ``auto`` (the default search) or a uniform ``rho``, JSON, and
optionally the lowest ``rho`` of the search's grid, in steps of 0.05 (default 0.7, the grid of this session's first
runs; the library's grid for 4-bit factors, `rsparse.search.RHOS_PACKED_FACTORS`, goes down to 0.5).
Results: benchmarks/NOTES.md, "Twenty-ninth session".
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
import rsparse.search
from rsparse.eval import window_nll
from rsparse.nn import rsparse_modules

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

target, bits, how, out = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
lowest_rho = float(sys.argv[5]) if len(sys.argv) > 5 else 0.7
# The search's option grid (module constants of rsparse.search). The runs of the twenty-ninth session set it
# explicitly: 0.7 was the grid then, and 0.5 the extension that became RHOS_PACKED_FACTORS.
rsparse.search.RHOS = rsparse.search.RHOS_PACKED_FACTORS = tuple(
    round(1.0 - 0.05 * i, 2) for i in range(round((1.0 - lowest_rho) / 0.05) + 1))
torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
sparse = copy.deepcopy(model)
cfg = rsparse.RSparseConfig(factor_bits=bits)
started = time.perf_counter()
if how == "auto":
    rsparse.sparsify(sparse, target, calibration=calib, seed=0, show_progress=False, config=cfg)
else:
    rsparse.sparsify(sparse, target, calibration=calib, seed=0, show_progress=False, config=cfg, search="none", rho=float(how))
seconds = time.perf_counter() - started
layers = rsparse_modules(sparse).values()
read = sum(m.budget.k * m.out_features + bits / 16 * m.rank * (m.in_features + m.out_features) for m in layers)
nll = window_nll(sparse, held).tolist()
name = ("searched" if how == "auto" else f"uniform rho {how}") + f", {bits}-bit factors" + (f", rho down to {lowest_rho}" if lowest_rho < 0.7 else "")
run = {"method": name, "target": target, "factor_bits": bits, "rhos": list(rsparse.search.RHOS_PACKED_FACTORS if bits != 16 else rsparse.search.RHOS), "score": sparse.rsparse_config.score,
       "layers_with_rank": sum(m.rank > 0 for m in layers), "max_rank": max(m.rank for m in layers),
       "read_share_of_dense": read / sum(m.in_features * m.out_features for m in layers),
       "budgets": {k: b.to_dict() for k, b in sparse.rsparse_config.layers.items()},
       "nll": nll, "sparsify_seconds": seconds}
out.write_text(json.dumps({"meta": meta, "runs": {f"{name}/target={target}": run}}))
print(name, target, sparse.rsparse_config.score, "layers with rank", run["layers_with_rank"], "read", run["read_share_of_dense"],
      "ppl first 8", math.exp(sum(nll[:8]) / 8), "ppl 64", math.exp(sum(nll) / len(nll)), "sparsify s", seconds, flush=True)
