"""Host time per eager call of a sparse layer on the GPU (issue 6: eager `generate` is host-bound).

Eager decoding of one token runs hundreds of small launches; when the host cannot issue them
faster than the GPU runs them, host time per call is what sets tokens per second. This times
back-to-back eager calls (no synchronisation inside the loop, so the GPU runs behind the host
and the loop measures issue time) of:

* ``F.linear`` on the dense weight (what a dense model issues per projection);
* an `RSparseLinear` module call (eager CUDA calls skip the op dispatcher: `rsparse.nn.direct_call`),
  uncaptured and replayed from its CUDA graph (`rsparse.eager_graphs`, the default);
* the same through ``torch.ops.rsparse.sparse_linear`` (the dispatcher, as traced code runs it);
* the fused q/k/v call through `rsparse.nn.forward_shared_input`, uncaptured and replayed;
* a gated MLP's down projection (14336 -> 4096) with ``F.silu(gate) * up`` formed in its launch,
  uncaptured and replayed, against ``F.linear(F.silu(gate) * up)``;
* q/k/v as a decoder layer calls them (three module calls) and a whole Llama-3-8B MLP module,
  each against its dense modules; the MLP also as two graphs (layer by layer, as before the seventh
  session of 2026-12-01), an A/B of the whole-MLP graph.

    PYTHONPATH=$PWD/src python3 benchmarks/eager_overhead.py --out results/eager_overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch
import torch.nn.functional as F

import rsparse
from rsparse import eager_graphs
from rsparse.budget import layer_budget
from rsparse.fuse import SharedInputGroup
from rsparse.fuse_silu import link_silu_mlps
from rsparse.nn import RSparseLinear, forward_shared_input
from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP


def per_call_us(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return best


def layer(n, m, s, x):
    lin = torch.nn.Linear(n, m, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    return layer_from(lin, s, x)


def layer_from(lin, s, x):
    n, m = lin.in_features, lin.out_features
    mod = RSparseLinear.from_linear(lin, tau=0.0, budget=layer_budget(n, m, s=s, rho=1.0), mode="sparse")
    score = (x.float().abs() * mod.c).flatten()
    mod.tau.fill_(float(score.quantile(s)))  # keeps about 1 - s of the channels of x
    return mod


def lin_of(mod):
    lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=False, device="cuda", dtype=torch.bfloat16)
    lin.weight.data = mod.weight.contiguous()
    return lin.requires_grad_(False)


@contextlib.contextmanager
def patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    eager_graphs.invalidate()  # graphs captured before would replay the other variant
    try:
        yield
    finally:
        setattr(owner, name, old)
        eager_graphs.invalidate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rsparse.set_backend("triton")
    torch.manual_seed(0)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    o = layer(4096, 4096, 0.5, x)
    qkv = [layer(4096, m, 0.5, x) for m in (4096, 1024, 1024)]
    w = o.weight.contiguous()
    args = (o.weight_t, o.c, o.tau, o.lowrank_in, o.lowrank_out, o.bias, 0.5)
    gate, up = (torch.randn(1, 14336, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    down = layer(14336, 4096, 0.5, F.silu(gate) * up)
    wd = down.weight.contiguous()
    rows = {}

    def both(name, fn):  # uncaptured, then replayed from the layer's CUDA graph
        eager_graphs.set_enabled(False)
        rows[f"{name}, uncaptured"] = per_call_us(fn, a.calls)
        eager_graphs.set_enabled(True)
        rows[f"{name}, graph replay"] = per_call_us(fn, a.calls)

    rows["F.linear 4096x4096 (dense)"] = per_call_us(lambda: F.linear(x, w), a.calls)
    both("RSparseLinear call 4096x4096", lambda: o(x))
    rows["torch.ops.rsparse.sparse_linear (dispatcher)"] = per_call_us(lambda: torch.ops.rsparse.sparse_linear(x, *args), a.calls)
    rows["3 x F.linear q/k/v (dense)"] = per_call_us(lambda: [F.linear(x, m.weight) for m in qkv], a.calls)
    both("forward_shared_input q/k/v (one launch)", lambda: forward_shared_input(x, qkv))
    rows["F.linear(F.silu(gate) * up) 14336->4096 (dense)"] = per_call_us(lambda: F.linear(F.silu(gate) * up, wd), a.calls)
    both("down_proj forward_silu_mul 14336->4096", lambda: down.forward_silu_mul(gate, up))

    # As a decoder layer calls them: q/k/v as three module calls of a linked group (one launch),
    # against three nn.Linear calls.
    dense_qkv = [lin_of(m) for m in qkv]
    rows["q/k/v: 3 nn.Linear calls (dense)"] = per_call_us(lambda: [m(x) for m in dense_qkv], a.calls)
    SharedInputGroup(qkv)
    both("q/k/v: 3 RSparseLinear calls, one fused launch", lambda: [m(x) for m in qkv])

    # A whole Llama-3-8B MLP (4096 -> 2 x 14336 -> 4096) as a module call: dense (three nn.Linear,
    # SiLU, product) against rsparse's MLP, replayed as one graph (gate/up launch and down launch),
    # as two graphs (the layer-by-layer calls, before 2026-12-01, seventh session), and uncaptured.
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336)
    with torch.device("cuda"):
        dense_mlp = LlamaMLP(cfg).to(torch.bfloat16).requires_grad_(False)
    sparse_mlp = copy.deepcopy(dense_mlp)
    h = F.silu(dense_mlp.gate_proj(x)) * dense_mlp.up_proj(x)
    for name, inp in (("gate_proj", x), ("up_proj", x), ("down_proj", h)):
        setattr(sparse_mlp, name, layer_from(getattr(dense_mlp, name), 0.5, inp))
    SharedInputGroup([sparse_mlp.gate_proj, sparse_mlp.up_proj])
    assert link_silu_mlps(sparse_mlp) == 1
    x3 = x.view(1, 1, 4096)
    rows["MLP 4096->14336->4096 (dense module)"] = per_call_us(lambda: dense_mlp(x3), a.calls)
    both("MLP (rsparse module)", lambda: sparse_mlp(x3))
    with patched(rsparse.fuse_silu, "_whole_mlp_launches", lambda mlp, x: None):
        rows["MLP (rsparse module), two graph replays (layer by layer)"] = per_call_us(lambda: sparse_mlp(x3), a.calls)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "calls": a.calls,
            "what": "host µs per eager call, back to back, best of 5 loops"}
    for k, v in rows.items():
        print(f"{v:8.1f} µs  {k}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "us_per_call": rows}, f, indent=1)


if __name__ == "__main__":
    main()
