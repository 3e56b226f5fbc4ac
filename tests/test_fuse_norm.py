"""A decoder layer's RMSNorms and residual adds folded into its sparse launches (`rsparse.fuse_norm`):
the ops' ``norm_weight`` and ``residual`` arguments on the PyTorch reference and the Triton kernels
(interpreter on CPU, compiled on the GPU), and the folded layer forward against the model's own."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import rsparse
from rsparse.fuse import set_fusion
from rsparse.fuse_norm import is_norm_layer
from rsparse.ops import backend, rms_norm_reference

from .conftest import random_tokens, tiny_model
from .test_fuse_silu import gated_args
from .test_kernels import TOL, _workspace_is_zero, compact_path, exact, make_args, rel_err  # noqa: F401

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton and TRITON_INTERPRET=1"
)
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")
DTYPES = list(TOL)


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    backend._backend = "auto"


def normed_args(n, ms, ranks, dtype, device, active=0.5, seed=0, eps=1e-5):
    """A residual stream ``h``, a norm weight, and one layer per width whose ``tau`` sits in the
    widest gap of the scores near ``active``: an input rounded an ulp apart (another order of the
    sum of squares) keeps the same channels."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = (torch.randn(1, n, generator=g) * 3).to(dtype=dtype, device=device)
    weight = (torch.rand(n, generator=g) + 0.5).to(dtype=dtype, device=device)
    x = rms_norm_reference(h, weight, eps)
    layers = []
    for i, (m, r) in enumerate(zip(ms, ranks)):
        _, w, c, _, li, lo, b = make_args(1, n, m, r, dtype, device, active, bias=i == 0, seed=seed + 10 + i)
        score = (x.abs().float() * c).flatten().sort().values
        k = min(max(int(round((1 - active) * n)), 1), n - 1)
        lo_k, hi_k = max(k - n // 8, 0), min(k + n // 8, n - 1)
        gaps = (score[lo_k + 1 : hi_k + 1] - score[lo_k:hi_k]) / score[lo_k + 1 : hi_k + 1].clamp_min(1e-30)
        j = lo_k + int(gaps.argmax())
        tau = ((score[j] + score[j + 1]) / 2).reshape(()).to(device=device, dtype=torch.float32)
        layers.append((w, c, tau, li, lo, b))
    return h, weight, eps, x, layers


def check_normed(n, ms, ranks, dtype, device="cpu", active=0.5, seed=0):
    from rsparse.kernels import sparse_linear as kernels

    h, weight, eps, x, layers = normed_args(n, ms, ranks, dtype, device, active, seed)
    lists = [list(a) for a in zip(*layers)]
    outs = [torch.full((1, m), float("nan"), dtype=dtype, device=device) for m in ms]
    ys = kernels.sparse_linear_multi(h, *lists, out=outs, norm_weight=weight, norm_eps=eps)
    for y, layer in zip(ys, layers):
        assert not torch.isnan(y).any(), "an output element was not written"
        err = rel_err(y, exact(x, *layer))
        assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"


# ------------------------------------------------------------------ the ops' reference


def test_reference_ops_add_the_residual_and_form_the_norm():
    h, weight, eps, x, layers = normed_args(70, [45, 20], [0, 3], torch.float32, "cpu")
    ys = torch.ops.rsparse.sparse_linear_multi(h, *[list(a) for a in zip(*layers)], 1.0, weight, eps)
    plain = torch.ops.rsparse.sparse_linear_multi(x, *[list(a) for a in zip(*layers)])
    assert all(torch.equal(a, b) for a, b in zip(ys, plain))
    res = torch.randn(1, 45)
    y = torch.ops.rsparse.sparse_linear(x, *layers[0], 1.0, res)
    assert torch.equal(y, res + torch.ops.rsparse.sparse_linear(x, *layers[0]))
    gate, up, *layer = gated_args(2, 64, 30, torch.float32, "cpu")
    res = torch.randn(2, 30)
    y = torch.ops.rsparse.sparse_linear_silu_mul(gate, up, *layer, 1.0, res)
    assert torch.equal(y, res + torch.ops.rsparse.sparse_linear_silu_mul(gate, up, *layer))


def test_bad_norm_weight_and_residual_are_errors():
    h, weight, eps, x, layers = normed_args(70, [45], [0], torch.float32, "cpu")
    lists = [list(a) for a in zip(*layers)]
    with pytest.raises(ValueError, match=r"norm_weight must be \[70\]"):
        torch.ops.rsparse.sparse_linear_multi(h, *lists, 1.0, weight[:60], eps)
    with pytest.raises(ValueError, match="norm_weight must be .* in torch.float32"):
        torch.ops.rsparse.sparse_linear_multi(h, *lists, 1.0, weight.half(), eps)
    with pytest.raises(ValueError, match=r"residual must be \[1, 45\]"):
        torch.ops.rsparse.sparse_linear(x, *layers[0], 1.0, torch.zeros(1, 44))


# ------------------------------------------------------------------ the kernels (interpreter)


@needs_triton
@pytest.mark.parametrize("ahead", [False, True], ids=["one step ahead", "two steps ahead"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(70, (45,), (0,)), (130, (77, 30, 20), (0, 0, 0)), (257, (64, 33), (0, 0))], ids=str)
def test_splitk_launch_folds_the_norm(case, dtype, ahead, monkeypatch):
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "PRENORM_AHEAD", ahead)
    n, ms, ranks = case
    check_normed(n, ms, ranks, dtype)
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(70, (45,), (0,)), (130, (77, 30), (5, 0)), (200, (64, 50, 40), (0, 9, 0))], ids=str)
def test_compact_launch_folds_the_norm(case, dtype, compact_path):
    n, ms, ranks = case
    compact_path(block_k=4, block_m=16, programs_per_sm=8)
    check_normed(n, ms, ranks, dtype)
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["rank", "long items"])
def test_splitk_norm_is_formed_first_where_not_folded(case, dtype, monkeypatch):
    # z items read x on their own, so the split-K launch folds no norm for a layer with rank, nor
    # into long items (PRENORM_MAX_ROWS): one small launch forms it first, with the same result.
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels

    formed = []
    orig = compact_gemv.rms_norm
    monkeypatch.setattr(compact_gemv, "rms_norm", lambda *a: formed.append(1) or orig(*a))
    if case == "rank":
        check_normed(90, (40, 30), (6, 0), dtype)
    else:
        monkeypatch.setattr(kernels, "PRENORM_MAX_ROWS", 0)
        check_normed(257, (64, 33), (0, 0), dtype)
    # fp32 (fp64 sums) takes PyTorch's norm instead, the reference's to the bit.
    assert formed == ([] if dtype == torch.float32 else [1])


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_launch_matches_the_reference(dtype):
    from rsparse.kernels.compact_gemv import rms_norm

    h, weight, eps, x, _ = normed_args(300, [], [], dtype, "cpu")
    y = rms_norm(h, weight, eps)
    # Another order of the sum of squares: at most one unit in the last place apart.
    assert y.dtype == dtype and (y.double() - x.double()).abs().max() <= x.double().abs().max() * {torch.float32: 1e-6}.get(dtype, 1e-2)


def _residual_case(path, dtype, T, compact_path):
    from rsparse.kernels import sparse_linear as kernels

    if path != "splitk":
        compact_path(path=path, block_k=4, block_m=16, programs_per_sm=8)
    if path == "inline":
        gate, up, w, c, tau, li, lo, b = gated_args(T, 120, 45, dtype, "cpu", 0.4, bias=True, seed=3)
        run = lambda **kw: kernels.sparse_linear_silu_mul(gate, up, w, c, tau, li, lo, b, **kw)  # noqa: E731
        x = torch.nn.functional.silu(gate) * up
    else:
        x, w, c, tau, li, lo, b = make_args(T, 120, 45, 4 if path == "compact" else 0, dtype, "cpu", 0.4, bias=True, seed=3)
        run = lambda **kw: kernels.sparse_linear(x, w, c, tau, li, lo, b, **kw)  # noqa: E731
    res = (torch.randn(T, 45, generator=torch.Generator().manual_seed(5)) * 4).to(dtype)
    out = torch.full((T, 45), float("nan"), dtype=dtype)
    y = run(out=out, residual=res)
    assert not torch.isnan(y).any()
    assert rel_err(y, exact(x, w, c, tau, li, lo, b) + res.double()) <= TOL[dtype]
    # The add is the one PyTorch would do on this launch's own output: the interpreter's sums are
    # in a fixed order, so the two calls agree to the bit.
    assert torch.equal(y, res + run())
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path,T", [("splitk", 1), ("splitk", 3), ("compact", 1), ("inline", 1)])
def test_launches_add_the_residual(path, T, dtype, compact_path):
    _residual_case(path, dtype, T, compact_path)


# ------------------------------------------------------------------ the folded decoder layer


def _decode(model, ids, steps=6):
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits)


def _folded_calls(model, monkeypatch):
    import rsparse.fuse_norm as fuse_norm

    calls = []
    orig = fuse_norm._fold_now
    monkeypatch.setattr(fuse_norm, "_fold_now", lambda layer, h: calls.append(orig(layer, h)) or calls[-1])
    return calls


@pytest.mark.parametrize("family", ["llama3", "qwen3", "mistral"])
def test_folded_layers_give_the_models_own_logits(family, monkeypatch):
    # The PyTorch reference forms the norm and the add with the model's own ops, so the folded
    # decode steps are the model's to the bit; prefill (many tokens) runs the class's forward.
    model = tiny_model(family)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    assert all(is_norm_layer(layer) for layer in model.model.layers)
    ids = random_tokens(2, 10, 3)[:1]
    calls = _folded_calls(model, monkeypatch)
    with torch.no_grad():
        seq, logits = _decode(model, ids)
        folded = sum(calls)
        set_fusion(model, False)
        seq0, logits0 = _decode(model, ids)
    assert folded == 5 * len(model.model.layers)  # every decode step after the first token, every layer
    assert sum(calls) == folded  # none with fusion off
    assert torch.equal(seq, seq0) and torch.equal(logits, logits0)


def test_other_layers_and_calls_keep_the_class_forward(monkeypatch):
    for family in ("gemma2", "phi3"):  # four norms per layer; a fused qkv_proj
        model = tiny_model(family)
        rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
        assert not any(is_norm_layer(layer) or "forward" in vars(layer) for layer in model.model.layers)

    model = tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    calls = _folded_calls(model, monkeypatch)
    ids = random_tokens(2, 10, 3)
    with torch.no_grad():
        _decode(model, ids, steps=3)  # batch 2: two tokens per step
        assert not any(calls)
        hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: None)
        _decode(model, ids[:1], steps=3)
        assert calls.count(True) == 2  # layer 1 only: a hook on down_proj keeps layer 0 as it was
        hook.remove()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_folded_layers_on_the_triton_kernels(dtype, monkeypatch):
    model = tiny_model("llama3", dtype=dtype)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, 1), search="none", show_progress=False)
    rsparse.set_backend("triton")
    ids = random_tokens(2, 10, 3)[:1]
    calls = _folded_calls(model, monkeypatch)
    with torch.no_grad():
        _, logits = _decode(model, ids, steps=4)
        set_fusion(model, False)
        _, logits0 = _decode(model, ids, steps=4)
    assert sum(calls) == 3 * len(model.model.layers)
    # Same tokens fed (teacher forcing would part only on a near tie); logits within the dtype's rounding.
    err = ((logits.double() - logits0.double()).norm() / logits0.double().norm()).item()
    assert err <= {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype], err


# ------------------------------------------------------------------ the GPU


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("active", [0.5, 0.3])
def test_gpu_launches_fold_norm_and_residual(dtype, active):
    # Llama-3-8B's shapes: q/k/v (the split-K launch) and gate/up (the compact path at these
    # fractions) fold the norm; o_proj and down_proj (SiLU product inline) add the residual.
    from rsparse.kernels import sparse_linear as kernels

    check_normed(4096, (4096, 1024, 1024), (0, 0, 0), dtype, "cuda", active, seed=1)
    check_normed(4096, (14336, 14336), (0, 0), dtype, "cuda", active, seed=2)
    for n, m, silu in ((4096, 4096, False), (14336, 4096, True)):
        res = (torch.randn(1, m, device="cuda") * 4).to(dtype)
        if silu:
            gate, up, w, c, tau, li, lo, b = gated_args(1, n, m, dtype, "cuda", active, seed=3)
            x = torch.nn.functional.silu(gate) * up
            run = lambda **kw: kernels.sparse_linear_silu_mul(gate, up, w, c, tau, li, lo, b, active_fraction=active, **kw)  # noqa: E731
        else:
            x, w, c, tau, li, lo, b = make_args(1, n, m, 0, dtype, "cuda", active, seed=4)
            run = lambda **kw: kernels.sparse_linear(x, w, c, tau, li, lo, b, active_fraction=active, **kw)  # noqa: E731
        out = torch.full((1, m), float("nan"), dtype=dtype, device="cuda")
        y = run(out=out, residual=res)
        assert not torch.isnan(y).any()
        assert rel_err(y, exact(x, w, c, tau, li, lo, b) + res.double()) <= TOL[dtype]
    assert _workspace_is_zero()
