"""Norm slots (`rsparse.ops.norm_slots`): the launch that writes a residual stream leaves its sum of
squares, and the next launch's folded RMSNorm reads it instead of the whole row. Producers on every
path (split-K, compaction + gather, inline, the PyTorch reference), consumers (split-K, compaction),
and the hand-over between folded decoder layers."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import rsparse
from rsparse.fuse import set_fusion
from rsparse.ops import backend, norm_slots

from .conftest import random_tokens, tiny_model
from .test_fuse_norm import _decode, normed_args
from .test_fuse_silu import gated_args
from .test_kernels import TOL, _workspace_is_zero, compact_path, exact, make_args, rel_err  # noqa: F401

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton and TRITON_INTERPRET=1"
)
DTYPES = list(TOL)
SLOT = norm_slots.claim(1)[0]  # this module's own slot


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    backend._backend = "auto"


def _sumsq(y):
    return float(y.float().square().sum())


def _poison(slot=SLOT, device="cpu"):
    # A count past every word and garbage everywhere: a producer must rewrite what a reader uses.
    norm_slots.slot_views(torch.device(device), slot).fill_(-1.0)[-1] = norm_slots.WORDS - 1


def _set(total, slot=SLOT, device="cpu"):
    norm_slots.record(torch.tensor([[total]], device=device).sqrt(), slot)


def test_claims_and_bad_slots():
    a, b = norm_slots.claim(2)
    assert b == a + 1 and a > SLOT
    with pytest.raises(ValueError, match=r"norm slot must be in \[0, 1024\), got 5000"):
        norm_slots.slot_views(torch.device("cpu"), 5000)
    assert norm_slots.slot_views(torch.device("cpu"), -1) is None


def test_reference_ops_record_one_token_outputs():
    x, w, c, tau, li, lo, b = make_args(1, 70, 45, 3, torch.float32, "cpu", 0.5, bias=True, seed=1)
    res = torch.randn(1, 45)
    _poison()
    y = torch.ops.rsparse.sparse_linear(x, w, c, tau, li, lo, b, 1.0, res, SLOT)
    assert norm_slots.value(torch.device("cpu"), SLOT) == pytest.approx(_sumsq(y), rel=1e-6)
    gate, up, *layer = gated_args(1, 64, 30, torch.float32, "cpu")
    _poison()
    y = torch.ops.rsparse.sparse_linear_silu_mul(gate, up, *layer, 1.0, None, SLOT)
    assert norm_slots.value(torch.device("cpu"), SLOT) == pytest.approx(_sumsq(y), rel=1e-6)
    # Many tokens: no row to speak of, the slot is left alone.
    _poison()
    torch.ops.rsparse.sparse_linear(torch.cat([x, x]), w, c, tau, li, lo, b, 1.0, None, SLOT)
    assert norm_slots.value(torch.device("cpu"), SLOT) == -(norm_slots.WORDS - 1)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["splitk", "splitk rank", "compact", "inline"])
def test_producing_launches_leave_the_sum_of_squares(path, dtype, compact_path):
    from rsparse.kernels import sparse_linear as kernels

    if path in ("compact", "inline"):
        compact_path(path=path, block_k=4, block_m=16, programs_per_sm=8)
    res = (torch.randn(1, 45, generator=torch.Generator().manual_seed(5)) * 4).to(dtype)
    if path == "inline":
        gate, up, *layer = gated_args(1, 120, 45, dtype, "cpu", 0.4, bias=True, seed=3)
        run = lambda **kw: kernels.sparse_linear_silu_mul(gate, up, *layer, **kw)  # noqa: E731
    else:
        args = make_args(1, 120, 45, 4 if "rank" in path or path == "compact" else 0, dtype, "cpu", 0.4, bias=True, seed=3)
        run = lambda **kw: kernels.sparse_linear(*args, **kw)  # noqa: E731
    plain = run(residual=res)
    _poison()
    y = run(residual=res, sumsq_out=SLOT)
    assert torch.equal(y, plain)  # the slot never changes the output
    got = norm_slots.value(torch.device("cpu"), SLOT)
    assert got == pytest.approx(_sumsq(y), rel=1e-5)
    tiles = int(norm_slots.slot_views(torch.device("cpu"), SLOT)[-1])
    assert 1 <= tiles < norm_slots.WORDS - 1
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", ["splitk", "compact"])
def test_consuming_launches_read_the_slot(path, dtype, compact_path):
    from rsparse.kernels import sparse_linear as kernels

    if path == "compact":
        compact_path(block_k=4, block_m=16, programs_per_sm=8)
    h, weight, eps, x, layers = normed_args(130, [77, 30], [0, 0], dtype, "cpu")
    lists = [list(a) for a in zip(*layers)]
    run = lambda slot: kernels.sparse_linear_multi(h, *lists, norm_weight=weight, norm_eps=eps, sumsq_in=slot)  # noqa: E731
    plain = run(-1)
    _set(_sumsq(h))
    for y, y0, layer in zip(run(SLOT), plain, layers):
        assert rel_err(y, exact(x, *layer)) <= TOL[dtype]
        # Only the order of the sum of squares differs from the whole-row load.
        assert rel_err(y, y0.double()) <= TOL[dtype]
    # A wrong value in the slot changes the result: the launch reads it rather than the row.
    _set(16 * _sumsq(h))
    assert not torch.allclose(run(SLOT)[0].float(), plain[0].float(), rtol=0.1, atol=0)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_folded_layers_hand_the_slots_on(dtype, monkeypatch):
    # Each folded step reads a slot in gate/up of every layer and in q/k/v of every layer but the
    # first, and gives the logits of the unfolded model within the dtype's rounding.
    from rsparse.kernels import sparse_linear as kernels

    model = tiny_model("llama3", dtype=dtype)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    rsparse.set_backend("triton")
    seen = []
    orig = kernels.sparse_linear_multi
    monkeypatch.setattr(kernels, "sparse_linear_multi", lambda *a, **kw: seen.append(kw.get("sumsq_in", -1)) or orig(*a, **kw))
    ids = random_tokens(2, 10, 3)[:1]
    layers = len(model.model.layers)
    with torch.no_grad():
        _, logits = _decode(model, ids, steps=4)
        reads = [s for s in seen if s >= 0]
        set_fusion(model, False)
        _, logits0 = _decode(model, ids, steps=4)
    assert len(reads) == 3 * (2 * layers - 1)  # three folded steps
    assert len(set(reads)) == 2 * layers - 1  # each slot its own
    err = ((logits.double() - logits0.double()).norm() / logits0.double().norm()).item()
    assert err <= {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype], err


def test_handoff_only_for_the_tensor_that_was_written(monkeypatch):
    import rsparse.fuse_norm as fuse_norm

    model = tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    first, second = model.model.layers[0], model.model.layers[1]
    assert first.rsparse_handoff_out is second.rsparse_handoff_in is not None
    assert first.rsparse_handoff_in is None and model.model.layers[-1].rsparse_handoff_out is None
    norms = []
    orig = torch.ops.rsparse.sparse_linear_multi
    monkeypatch.setattr(torch.ops.rsparse, "sparse_linear_multi", lambda *a: norms.append(a[-1] if len(a) > 10 else None) or orig(*a))
    h = torch.randn(1, 1, model.config.hidden_size)
    pos = torch.zeros(1, 1, dtype=torch.long)
    emb = model.model.rotary_emb(h, pos)
    with torch.no_grad():
        out = first(h, position_embeddings=emb, attention_mask=None)
        assert first.rsparse_handoff_out.tensor is out
        second(out.clone(), position_embeddings=emb, attention_mask=None)  # not the tensor written
        assert norms[-2] == -1 and norms[-1] >= 0  # q/k/v form the norm from the row; gate/up read o_proj's slot
        assert second.rsparse_handoff_in.tensor is None  # cleared by the call
        out = first(h, position_embeddings=emb, attention_mask=None)
        second(out, position_embeddings=emb, attention_mask=None)
        assert norms[-2] == first.rsparse_norm_slots[1]
        monkeypatch.setattr(fuse_norm, "NORM_SLOTS", False)
        out = first(h, position_embeddings=emb, attention_mask=None)
        second(out, position_embeddings=emb, attention_mask=None)
        assert norms[-2:] == [-1, -1]


def test_compiled_batch1_step_keeps_the_slots_in_one_graph():
    # Traced once: o_proj and down_proj name their slots, every folded norm but the first layer's
    # q/k/v names the slot its input's writer fills; the same tokens as eager, no recompilation.
    from torch._dynamo.utils import counters

    from rsparse.bench import compile_decode_step, decode_tokens

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    prompt = random_tokens(1, 16, seed=5)
    eager = decode_tokens(model, prompt, 6)
    step = compile_decode_step(model, backend=capture)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = decode_tokens(model, prompt, 6, step=step)
            again = decode_tokens(model, prompt, 6, step=step)
        assert len(graphs) == 1 and not counters["graph_break"]
    finally:
        torch._dynamo.reset()
    ops = [n for n in graphs[0].graph.nodes if n.op == "call_function" and str(n.target).startswith("rsparse.")]
    slots = [n.args[-1] for n in ops if isinstance(n.args[-1], int) and n.args[-1] >= 0]
    layers = len(model.model.layers)
    assert len(slots) == 2 * layers + 2 * layers - 1 and len(set(slots)) == 2 * layers
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    assert all(layer.rsparse_handoff_in is None or layer.rsparse_handoff_in.tensor is None for layer in model.model.layers)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("active", [0.5, 0.3])
def test_gpu_slots_between_the_launches_of_a_layer(dtype, active):
    # Llama-3-8B's shapes, as a folded layer runs them: o_proj (split-K) and down_proj (SiLU product
    # inline) add the residual and fill a slot; q/k/v (split-K) and gate/up (compact) fold the norm
    # from it. Each against the fp64 rule, and the slot against the sum of squares of what was stored.
    from rsparse.kernels import sparse_linear as kernels

    dev = torch.device("cuda")
    slot = SLOT
    for n, m, silu in ((4096, 4096, False), (14336, 4096, True)):
        _poison(slot, dev)
        res = (torch.randn(1, m, device=dev) * 4).to(dtype)
        if silu:
            gate, up, w, c, tau, li, lo, b = gated_args(1, n, m, dtype, dev, active, seed=3)
            x = torch.nn.functional.silu(gate) * up
            y = kernels.sparse_linear_silu_mul(gate, up, w, c, tau, li, lo, b, active_fraction=active, residual=res,
                                               sumsq_out=slot)
        else:
            x, w, c, tau, li, lo, b = make_args(1, n, m, 0, dtype, dev, active, seed=4)
            y = kernels.sparse_linear(x, w, c, tau, li, lo, b, active_fraction=active, residual=res, sumsq_out=slot)
        assert rel_err(y, exact(x, w, c, tau, li, lo, b) + res.double()) <= TOL[dtype]
        got, want = norm_slots.value(dev, slot), _sumsq(y)
        assert abs(got - want) <= 1e-5 * want, (got, want)
    for ms in ((4096, 1024, 1024), (14336, 14336)):
        h, weight, eps, x, layers = normed_args(4096, list(ms), [0] * len(ms), dtype, dev, active, seed=len(ms))
        _set(_sumsq(h), slot, dev)
        lists = [list(a) for a in zip(*layers)]
        outs = [torch.full((1, m), float("nan"), dtype=dtype, device=dev) for m in ms]
        ys = kernels.sparse_linear_multi(h, *lists, out=outs, active_fraction=active, norm_weight=weight, norm_eps=eps,
                                         sumsq_in=slot)
        for y, layer in zip(ys, layers):
            assert not torch.isnan(y).any()
            assert rel_err(y, exact(x, *layer)) <= TOL[dtype]
        _set(100 * _sumsq(h), slot, dev)  # read, not the row: a wrong value shows
        bad = kernels.sparse_linear_multi(h, *lists, active_fraction=active, norm_weight=weight, norm_eps=eps, sumsq_in=slot)
        assert rel_err(bad[0], exact(x, *layers[0])) > TOL[dtype]
    assert _workspace_is_zero()
