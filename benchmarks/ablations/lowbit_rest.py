"""Ablation (issue 4, twenty-eighth session): a low-bit copy of the weight for the dropped channels,
against spending the same bytes on more channels (and against R-Sparse's low-rank path).

R-Sparse serves the inactive channels ``x ⊙ (1 - m)`` with a rank-``r`` factorization of the weight.
On SmolLM2 that path loses to plain channels at equal bytes (`NOTES.md`, acceptance 5: the top singular
values hold 10-38 % of each weight's energy).  The alternative measured here serves them with a
``bits``-bit copy of the whole weight, quantized row by row (a row of ``Wᵀ`` is one input channel) in
groups of ``group`` outputs, min/max with an fp16 scale and offset per group, dequantized
(fake-quantized) in fp32.  The copy is read only for the inactive rows, so per token its bytes are
``(1 - k) * (bits + 32 / group) / 16`` of the dense weight, ``k`` the kept share of channels: at equal
bytes ``k + f (1 - k) = 1 - target``, ``f = (bits + 32 / group) / 16``.

Uniform budgets (``search="none"``, rho 1), strict protocol, the model, calibration, seed and 64
held-out windows of `benchmarks/search_paired.py`, so the JSON compares window by window with the
others of this session.  CPU only: no kernel reads such a copy.

    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_rest.py 0.5 2 64 out.json   # 2-bit rest
    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_rest.py 0.5 0 64 out.json   # channels only
    OMP_NUM_THREADS=1 python benchmarks/ablations/lowbit_rest.py quant 3 64 out.json # every weight 3-bit, dense

``quant`` in place of the target: no sparsity, every decoder linear's weight replaced by its quantized copy
(bytes ``f`` of dense), for context: the same quantizer on its own.

Arguments: model-level target (share of the dense bytes not read), bits (0: no rest path), group, JSON, and
optionally the search (default ``none``; ``auto`` searches the channel budgets for the channel target
``1 - k`` as if there were no rest path, then adds it) and the protocol (default ``strict``; ``deployment``:
the first 256 tokens of each window are a dense prompt, the rest is scored sparse).
Results: benchmarks/NOTES.md, "Twenty-eighth session".
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
from rsparse.eval import window_nll
from rsparse.fuse import set_fusion
from rsparse.nn import RSparseLinear

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import search  # noqa: E402  (benchmarks/search.py: the data setup search_paired.py uses)

pure = sys.argv[1] == "quant"
bits, group, out = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
how = sys.argv[5] if len(sys.argv) > 5 else "none"
protocol = sys.argv[6] if len(sys.argv) > 6 else "strict"
f = (bits + 32 / group) / 16 if bits else 0.0
target = 1 - f if pure else float(sys.argv[1])
kept = 0.0 if pure else (1 - target - f) / (1 - f)  # share of channels on the bf16 path at equal bytes
if not pure and not 0 < kept <= 1:
    sys.exit(f"{bits}-bit rest leaves no channel budget at target {target} (kept share {kept:.3f})")


def fake_quant_rows(w_t: torch.Tensor) -> torch.Tensor:
    """``w_t`` ``[n, m]`` quantized to ``bits`` per value in groups of ``group`` along each row, dequantized."""
    n, m = w_t.shape
    pad = (-m) % group
    w = torch.nn.functional.pad(w_t.float(), (0, pad)).view(n, -1, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    lo, hi = lo.half().float(), hi.half().float()  # the stored offset and range are fp16
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    q = ((w - lo) / scale).round().clamp(0, 2**bits - 1)
    return (q * scale + lo).view(n, -1)[:, :m]


def add_rest_path(module: RSparseLinear) -> None:
    """Forward hook: the output plus the quantized copy times the inactive inputs (as the mask drops them)."""
    w_hat = fake_quant_rows(module.weight_t.detach())
    err = ((w_hat - module.weight_t.float()).norm() / module.weight_t.float().norm()).item()
    ERRORS.append(err)

    def hook(mod, args, output):
        x = args[0]
        if not mod.takes_kernel(x):  # the dense GEMM already multiplied every channel
            return output
        inactive = torch.where(x.abs().float() * mod.c > mod.tau, 0.0, x.float())
        return (output.float() + inactive @ w_hat).to(output.dtype)

    module.register_forward_hook(hook)


ERRORS: list[float] = []
torch.manual_seed(0)
model, held, calib, meta = search.load_data(512, 64, 16, 0)
sparse = copy.deepcopy(model)
started = time.perf_counter()
if pure:  # every decoder linear quantized, nothing sparse
    for name, m in sparse.model.layers.named_modules():
        if isinstance(m, torch.nn.Linear):
            w_hat = fake_quant_rows(m.weight.detach().t()).t()
            ERRORS.append(((w_hat - m.weight.float()).norm() / m.weight.float().norm()).item())
            m.weight.data = w_hat.to(m.weight.dtype)
else:
    rsparse.sparsify(sparse, 1 - kept, calibration=calib, seed=0, show_progress=False, search=how, rho=1.0)
seconds = time.perf_counter() - started
if bits and not pure:
    set_fusion(sparse, False)  # every layer called on its own, so each hook sees its own input
    for m in sparse.modules():
        if isinstance(m, RSparseLinear):
            add_rest_path(m)
nll = window_nll(sparse, held, protocol=protocol, context=256 if protocol == "deployment" else 0).tolist()
name = (f"every weight {bits}-bit g{group}" if pure else f"rest {bits}-bit g{group}" if bits else "channels only") + ("" if how == "none" else f", search {how}")
run = {"method": name, "protocol": protocol, "target": target, "kept_channels": kept, "rest_bytes_per_row": f, "nll": nll,
       "sparsify_seconds": seconds, "hooks": len(ERRORS),
       "weight_rel_error_mean": sum(ERRORS) / len(ERRORS) if ERRORS else None}
out.write_text(json.dumps({"meta": meta, "runs": {f"{name}/target={target}": run}}))
print(name, protocol, target, f"kept {kept:.3f}", "ppl first 8", math.exp(sum(nll[:8]) / 8), "ppl 64", math.exp(sum(nll) / len(nll)),
      "weight error", run["weight_rel_error_mean"], flush=True)
