"""``F.silu(gate) * up`` formed inside the down projection's launch (`rsparse.fuse_silu`,
``rsparse::sparse_linear_silu_mul``): same results as forming it first, on the PyTorch
reference and on the Triton kernels (interpreter on CPU, compiled on the GPU)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rsparse
from rsparse.fuse import set_fusion
from rsparse.fuse_norm import is_norm_layer
from rsparse.fuse_silu import is_silu_mlp, link_silu_mlps
from rsparse.nn import RSparseLinear
from rsparse.ops import backend, sparse_linear_silu_mul_reference

from .conftest import random_tokens, tiny_model
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


def gated_args(T, n, m, dtype, device, active=0.5, bias=False, seed=0, rank=0):
    """``gate``, ``up`` and a layer whose ``tau`` keeps about ``active`` of ``F.silu(gate) * up``."""
    x, w, c, tau, li, lo, b = make_args(T, n, m, rank, dtype, device, active, bias, seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 100)
    gate = (torch.randn(T, n, generator=g) * 3).to(dtype=dtype, device=device)
    up = (torch.randn(T, n, generator=g) * 2).to(dtype=dtype, device=device)
    score = ((F.silu(gate) * up).abs().float() * c).flatten()
    if active <= 0:
        tau = (score.max() + 1).reshape(())
    elif active < 1:
        tau = score.quantile(1 - active).reshape(()).to(torch.float32)
    return gate, up, w, c, tau, li, lo, b


def check_silu_mul(args, dtype, device, active_fraction=1.0):
    """The Triton op into a NaN-filled output against the fp64 rule on the product PyTorch forms."""
    from rsparse.kernels import sparse_linear as kernels

    gate, up, *layer = args
    out = torch.full((gate.shape[0], layer[0].shape[1]), float("nan"), dtype=dtype, device=device)
    y = kernels.sparse_linear_silu_mul(gate, up, *layer, out=out, active_fraction=active_fraction)
    assert not torch.isnan(y).any(), "an output element was not written"
    err = rel_err(y, exact(F.silu(gate) * up, *layer))
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"


# ------------------------------------------------------------------ the product in the kernel


if HAS_TRITON:
    import triton
    import triton.language as tl

    from rsparse.kernels.compact_gemv import silu_mul

    @triton.jit
    def _product_kernel(g_ptr, u_ptr, o_ptr, N: tl.constexpr, EXACT_EXP: tl.constexpr):
        offs = tl.arange(0, N)
        g = tl.load(g_ptr + offs).to(tl.float32)
        u = tl.load(u_ptr + offs).to(tl.float32)
        tl.store(o_ptr + offs, silu_mul(g, u, g_ptr.dtype.element_ty, EXACT_EXP))


def _silu_mul_in_triton(gate, up, exact_exp):
    out = torch.empty(gate.numel(), dtype=torch.float32, device=gate.device)
    _product_kernel[(1,)](gate, up, out, N=gate.numel(), EXACT_EXP=exact_exp)
    return out


def _product_agreement(device, exact_exp):
    for dtype in DTYPES:
        g = torch.Generator(device="cpu").manual_seed(3)
        gate = (torch.randn(8192, generator=g) * 4).to(dtype=dtype, device=device)
        up = (torch.randn(8192, generator=g) * 2).to(dtype=dtype, device=device)
        got = _silu_mul_in_triton(gate, up, exact_exp)
        ref = (F.silu(gate) * up).float()
        # Rounded like eager PyTorch: the same value in the dtype, or (where the two exps differ
        # in the last fp32 bit and the result sits on a rounding boundary) one step of the dtype.
        # Two roundings (silu, then the product): up to two steps, relative to the result; below
        # the dtype's smallest normal number a step is absolute.
        step = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 2**-22}[dtype]
        bound = 2 * step * ref.abs() + torch.finfo(dtype).tiny
        assert ((got - ref).abs() <= bound).all(), (dtype, (got - ref).abs().max().item())
        same = (got == ref).float().mean().item()
        assert same >= (0.999 if dtype != torch.float32 else 0.5), (dtype, same)
        yield dtype, same


@needs_triton
def test_product_is_rounded_like_eager_pytorch():
    # The interpreter's fp32 -> bf16 cast truncates; `round_like` rounds to nearest even.
    dict(_product_agreement("cpu", exact_exp=False))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)  # fp32: the next test
@pytest.mark.parametrize("shape", [(70, 45, False, 0.5, 4), (130, 77, True, 0.3, 16), (301, 40, False, 0.6, 64),
                                   (64, 50, True, 1.0, 4), (200, 64, True, 0.0, 4)], ids=str)
def test_inline_launch_forms_the_product(shape, dtype, compact_path, monkeypatch):
    from rsparse.kernels import compact_gemv

    n, m, bias, active, pps = shape
    compact_path(path="inline", programs_per_sm=pps)
    ups = []
    orig = compact_gemv._inline
    monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: ups.append(a[-1]) or orig(*a, **k))
    for seed in range(2):
        check_silu_mul(gated_args(1, n, m, dtype, "cpu", active, bias, seed), dtype, "cpu")
    assert len(ups) == 2 and all(u is not None for u in ups)  # the one launch got gate and up
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("T, rank, path, dtype", [
    (3, 0, "inline", torch.float16), (1, 5, "inline", torch.float16), (1, 0, "splitk", torch.float16),
    (1, 0, "compact", torch.float16),
    (1, 0, "inline", torch.float32),  # fp32 (fp64 sums) always takes the split-K launch
], ids=str)
def test_other_launches_get_the_product_formed_first(T, rank, path, dtype, compact_path, monkeypatch):
    from rsparse.kernels import compact_gemv

    compact_path(path=path)
    calls = []
    orig = compact_gemv._inline
    monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: calls.append(1) or orig(*a, **k))
    check_silu_mul(gated_args(T, 90, 40, dtype, "cpu", 0.5, True, seed=2, rank=rank), dtype, "cpu")
    assert not calls
    assert _workspace_is_zero()


# ------------------------------------------------------------------ the module and the model


def _layer(n=64, m=48, rank=3, seed=0) -> RSparseLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(n, m, bias=True)
    return RSparseLinear.from_linear(
        lin, tau=0.3, lowrank_in=torch.randn(n, rank) / 8, lowrank_out=torch.randn(rank, m) / 8, mode="sparse"
    )


def test_forward_silu_mul_equals_the_layer_on_the_product():
    layer = _layer()
    for T in (1, 5, 12):
        gate, up = torch.randn(2, T, 64), torch.randn(2, T, 64)
        y = layer.forward_silu_mul(gate, up)
        torch.testing.assert_close(y, layer(F.silu(gate) * up), rtol=0, atol=0)
    ref = sparse_linear_silu_mul_reference(gate[0], up[0], layer.weight_t, layer.c, layer.tau, layer.lowrank_in,
                                           layer.lowrank_out, layer.bias)
    torch.testing.assert_close(torch.ops.rsparse.sparse_linear_silu_mul(gate[0], up[0], layer.weight_t, layer.c, layer.tau,
                                                                        layer.lowrank_in, layer.lowrank_out, layer.bias), ref)


@needs_triton
def test_kernel_rejects_mismatched_inputs():
    from rsparse.kernels import sparse_linear as kernels

    gate, up, *layer = gated_args(1, 40, 30, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"gate and up must both be \[T, n\], got \(1, 40\) and \(1, 39\)"):
        kernels.sparse_linear_silu_mul(gate, up[:, :39], *layer)


def test_forward_silu_mul_rejects_mismatched_inputs():
    layer = _layer()
    with pytest.raises(ValueError, match=r"gate and up must both be \[\.\.\., 64\], got \(1, 64\) and \(1, 63\)"):
        layer.forward_silu_mul(torch.randn(1, 64), torch.randn(1, 63))
    with pytest.raises(ValueError, match="must both be"):
        layer.forward_silu_mul(torch.randn(1, 32), torch.randn(1, 32))


def _sparse(family):
    model = tiny_model(family)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1), search="none", show_progress=False)
    return model


@pytest.mark.parametrize("family, linked", [("llama3", 2), ("qwen2", 2), ("mistral", 2), ("gemma2", 0), ("phi3", 0)])
def test_sparsify_links_silu_gated_mlps_only(family, linked):
    # Gemma's activation is GELU; Phi-3 projects gate and up with one linear.
    model = _sparse(family)
    assert sum(is_silu_mlp(m) for m in model.modules()) == linked
    # (the decoder layers of the Llama-form families have a forward of their own too: rsparse.fuse_norm)
    assert sum("forward" in vars(m) and hasattr(m, "down_proj") for m in model.modules()) == linked
    assert link_silu_mlps(model) == linked  # linking again is harmless


def test_an_mlp_of_another_form_is_left_alone():
    class Swapped(nn.Module):  # the same four attributes, but act_fn on up: not the gated form
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = nn.Linear(8, 8), nn.Linear(8, 8)
            self.down_proj = RSparseLinear.from_linear(nn.Linear(8, 8), tau=0.1)
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))

    class Gelu(Swapped):
        def __init__(self):
            super().__init__()
            self.act_fn = nn.GELU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class Plain(Gelu):
        def __init__(self):
            super().__init__()
            self.act_fn = nn.SiLU()

    assert not is_silu_mlp(Swapped()) and not is_silu_mlp(Gelu()) and is_silu_mlp(Plain())
    model = nn.Sequential(Swapped(), Gelu(), Plain())
    assert link_silu_mlps(model) == 1 and "forward" in vars(model[2])


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_decode_tokens_are_the_same_with_and_without_the_fused_product(backend_name):
    if backend_name == "triton" and not (HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs triton and TRITON_INTERPRET=1")
    from rsparse.bench import decode_tokens

    model = _sparse("llama3")
    rsparse.set_backend(backend_name)
    prompt = random_tokens(1, 16, seed=4)
    with torch.no_grad():
        fused = decode_tokens(model, prompt, 8)
        set_fusion(model, False)
        alone = decode_tokens(model, prompt, 8)
        set_fusion(model, True)
    assert torch.equal(fused, alone)


def test_hooks_on_down_proj_still_see_its_input():
    # rsparse.summary measures kept fractions with pre-hooks; the search records outputs with hooks.
    model = _sparse("llama3")
    down = model.model.layers[0].mlp.down_proj
    seen = []
    handle = down.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    tokens = random_tokens(1, 4, seed=2)
    rsparse.set_mode(model, "sparse")
    with torch.no_grad():
        model(tokens)
    assert seen == [torch.Size([1, 4, 96])]
    handle.remove()
    report = rsparse.summary(model, tokens=random_tokens(2, 8, seed=3))
    assert all(layer.kept is not None for layer in report.layers)
    calls = []
    plain = down.forward
    down.forward = lambda x: calls.append(x.shape) or plain(x)  # e.g. an offloading hook's wrapper
    with torch.no_grad():
        model(tokens)
    assert calls == [torch.Size([1, 4, 96])]


def test_restored_linears_fall_back_to_the_models_forward():
    from rsparse.install import restore

    model, dense = tiny_model("llama3"), tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1), search="none", show_progress=False)
    mlp = model.model.layers[0].mlp
    shapes = {"gate_proj": (64, 96), "up_proj": (64, 96), "down_proj": (96, 64)}
    restore(model, {f"model.layers.0.mlp.{n}": nn.Linear(*io, bias=False) for n, io in shapes.items()})
    assert "forward" in vars(mlp) and not isinstance(mlp.down_proj, RSparseLinear)
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), type(mlp).forward(mlp, x), rtol=0, atol=0)
        ref = dense.model.layers[0].mlp
        torch.testing.assert_close(mlp(x), ref(x), rtol=1e-6, atol=1e-6)


def test_linked_model_copies_and_pickles_and_foreign_forwards_stay():
    import copy
    import io

    model = _sparse("llama3")
    prompt = random_tokens(1, 12, seed=7)
    with torch.no_grad():
        ref = model(prompt).logits
        twin = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for other in (twin, loaded):
            mlp = other.model.layers[1].mlp
            assert mlp.forward.args[0] is mlp  # bound to the copy, not to the original
            torch.testing.assert_close(other(prompt).logits, ref, rtol=0, atol=0)
    hooked = model.model.layers[0].mlp
    hooked.forward = lambda x: x  # e.g. an offloading hook installed after sparsify
    assert link_silu_mlps(model) == 1 and vars(hooked)["forward"](3) == 3


def test_reloaded_model_links_its_mlps(tmp_path):
    model = _sparse("llama3")
    model.save_pretrained(tmp_path)
    loaded = rsparse.from_pretrained(tmp_path)
    assert sum("forward" in vars(m) and hasattr(m, "down_proj") for m in loaded.modules()) == 2
    # rsparse.fuse_norm links the decoder layers again too (where the layers return a tensor, as since 4.5x)
    def folded(m):
        return sum("forward" in vars(layer) and hasattr(layer, "rsparse_fold") for layer in m.modules())

    assert folded(loaded) == folded(model) == sum(is_norm_layer(layer) for layer in model.modules())
    assert all(m.rsparse_silu_mul for m in loaded.modules() if hasattr(m, "rsparse_silu_mul"))
    prompt = random_tokens(1, 12, seed=6)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, min_new_tokens=8)
    assert torch.equal(model.generate(prompt, **kw), loaded.generate(prompt, **kw))


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@needs_gpu
def test_gpu_product_is_rounded_like_eager_pytorch():
    agreement = dict(_product_agreement("cuda", exact_exp=True))
    # libdevice's expf and the correctly rounded division are what PyTorch's CUDA silu runs.
    assert all(v == 1.0 for v in agreement.values()), agreement


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_inline_launch_forms_the_product(dtype, monkeypatch):
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels

    ups = []
    orig = compact_gemv._inline
    monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: ups.append(a[-1]) or orig(*a, **k))
    # down_proj's shape takes the inline path by the shipped rules at <= 55 % active.
    for active in (0.5, 0.3, 0.1):
        for seed in range(2):
            check_silu_mul(gated_args(1, 14336, 4096, dtype, "cuda", active, True, seed), dtype, "cuda", active)
    # fp32 (fp64 sums) never takes the inline launch: PyTorch forms the product, as the reference does.
    assert len(ups) == (0 if dtype == torch.float32 else 6) and all(u is not None for u in ups)
    kernels.set_config(kernels.Config(path="inline", block_k=8, block_m=1024, programs_per_sm=4), "gemv1")
    try:  # odd shapes through the same launch
        for n, m in ((777, 333), (513, 1025), (3000, 1000)):
            check_silu_mul(gated_args(1, n, m, dtype, "cuda", 0.4, True, seed=5), dtype, "cuda", 0.4)
    finally:
        kernels.set_config(None, "gemv1")
    torch.cuda.synchronize()
    assert _workspace_is_zero()
