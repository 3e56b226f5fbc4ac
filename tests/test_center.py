"""Centred inputs: the sparse path thresholds and multiplies ``x - center`` and adds ``W·center``.

CPU tests check the layer against the fp64 rule, the dense path against `nn.Linear`, the fused
group against its members, `sparsify`'s choice of centred layers and save/load; the Triton path
runs under the interpreter (CI) and, behind the ``gpu`` marker, compiled, in CUDA graphs and
under ``torch.compile``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import rsparse
from rsparse.budget import layer_budget
from rsparse.config import RSparseConfig
from rsparse.nn import RSparseLinear, forward_shared_input, rsparse_modules
from rsparse.ops import backend
from tests.conftest import random_tokens, tiny_model

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton and TRITON_INTERPRET=1"
)
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    backend._backend = "auto"


def centred_layer(n, m, *, rank=0, bias=True, dtype=torch.float32, device="cpu", tau=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(n, m, bias=bias).to(dtype=dtype, device=device).requires_grad_(False)
    center = (torch.randn(n, generator=g) * 2).to(dtype=dtype, device=device)
    li = lo = None
    if rank:
        li = (torch.randn(n, rank, generator=g) / n**0.5).to(dtype=dtype, device=device)
        lo = (torch.randn(rank, m, generator=g) / 4).to(dtype=dtype, device=device)
    budget = layer_budget(n, m, s=0.5, rho=1.0 if not rank else 0.8)
    mod = RSparseLinear.from_linear(lin, tau=tau, center=center, lowrank_in=li, lowrank_out=lo, budget=budget, mode="sparse")
    return lin, mod, center


def offset_input(T, n, center, dtype, device="cpu", seed=1):
    # Inputs around the center, as the calibration median places it.
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, n, generator=g).to(device) + center.float()).to(dtype)


def exact(mod, x):
    """fp64 rule: mask on ``|x - center|·c``, sparse and low-rank paths on ``x - center``, plus ``W·center + b``."""
    xc = x - mod.center.to(x.dtype)
    act = xc.abs().float() * mod.c > mod.tau
    xd = xc.double()
    y = torch.where(act, xd, 0) @ mod.weight_t.double()
    if mod.rank:
        y = y + (torch.where(act, 0, xd) @ mod.lowrank_in.double()) @ mod.lowrank_out.double()
    return y + mod.center_bias.double()


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("T", [1, 5])
def test_sparse_path_follows_the_centred_rule(rank, T):
    lin, mod, center = centred_layer(48, 20, rank=rank)
    x = offset_input(T, 48, center, torch.float32)
    assert rel_err(mod(x), exact(mod, x)) <= 1e-6
    # The center bias is W·center + b: keeping every channel gives the dense output.
    mod.tau.fill_(-1.0)
    torch.testing.assert_close(mod(x), lin(x), rtol=1e-5, atol=1e-5)


def test_dense_path_is_the_original_linear_and_drops_the_offsets():
    lin, mod, center = centred_layer(64, 32, tau=0.8)
    x = offset_input(4, 64, center, torch.float32)
    mod.set_mode("dense")
    assert torch.equal(mod(x), lin(x))
    mod.set_mode("sparse")
    kept = ((x - center).abs() * mod.c > mod.tau).float().mean()
    assert 0.05 < kept < 0.95  # the threshold acts on the centred values, not on |x| (which keeps all)
    assert ((x.abs() * mod.c) > mod.tau).float().mean() > kept


def test_fused_group_equals_its_members_and_needs_one_center():
    _, a, center = centred_layer(40, 24, rank=2, seed=0)
    lin_b = torch.nn.Linear(40, 16).requires_grad_(False)
    b = RSparseLinear.from_linear(lin_b, tau=0.3, center=center, mode="sparse")
    x = offset_input(3, 40, center, torch.float32)
    ya, yb = forward_shared_input(x, [a, b])
    torch.testing.assert_close(ya, a.forward_alone(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yb, b.forward_alone(x), rtol=1e-5, atol=1e-5)
    plain = RSparseLinear.from_linear(torch.nn.Linear(40, 8), tau=0.3, mode="sparse")
    with pytest.raises(ValueError, match="centred"):
        forward_shared_input(x, [a, plain])
    from rsparse.fuse import SharedInputGroup

    other = RSparseLinear.from_linear(torch.nn.Linear(40, 8), tau=0.3, center=center + 1, mode="sparse")
    with pytest.raises(ValueError, match="same center"):
        SharedInputGroup([a, other])


def test_sparsify_centres_the_normalised_inputs_only(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, search="none", show_progress=False)
    layers = model.rsparse_config.layers
    assert model.rsparse_config.center == "median"
    for name, m in rsparse_modules(model).items():
        assert (m.center is not None) == (not name.endswith(("o_proj", "down_proj"))), name
        assert layers[name].centered == (m.center is not None)
    # A group shares its center (one fused launch), and it is the median of what the layer saw.
    attn = model.model.layers[0].self_attn
    assert torch.equal(attn.q_proj.center, attn.k_proj.center)
    assert attn.q_proj.center.abs().sum() > 0

    plain = tiny_model()
    rsparse.sparsify(plain, 0.5, calibration=calib, search="none", show_progress=False,
                     config=RSparseConfig(center="none"))
    assert all(m.center is None for m in rsparse_modules(plain).values())
    assert not any(b.centered for b in plain.rsparse_config.layers.values())


def test_center_settings_are_validated():
    with pytest.raises(ValueError, match="center must be one of"):
        RSparseConfig(center="mean")
    with pytest.raises(ValueError, match="center_exclude must be a list"):
        RSparseConfig(center_exclude="*down_proj")
    # A config written before centring existed describes uncentred layers.
    old = RSparseConfig().to_dict()
    old.pop("center"), old.pop("center_exclude")
    old["format_version"] = 2
    assert RSparseConfig.from_dict(old).center == "none"


def test_centred_model_round_trips(tmp_path, calib):
    model = tiny_model("qwen2")  # q/k/v with a bias of their own
    rsparse.sparsify(model, 0.5, calibration=calib, search="none", show_progress=False)
    tokens = random_tokens(2, 12, seed=5)
    rsparse.set_mode(model, "sparse")
    with torch.no_grad():
        before = model(tokens).logits
    model.save_pretrained(tmp_path)
    loaded = rsparse.from_pretrained(tmp_path)
    rsparse.set_mode(loaded, "sparse")
    with torch.no_grad():
        after = loaded(tokens).logits
    assert torch.equal(before, after)
    assert any(m.center is not None for m in rsparse_modules(loaded).values())


@needs_triton
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("rank", [0, 4])
def test_triton_interpreter_matches_reference(dtype, T, rank):
    _, mod, center = centred_layer(72, 40, rank=rank, dtype=dtype)
    _, mod2, _ = centred_layer(72, 24, dtype=dtype, seed=0)  # same center: same seed
    x = offset_input(T, 72, center, dtype)
    rsparse.set_backend("torch")
    ref, ref2 = mod(x), mod2(x)
    rsparse.set_backend("triton")
    y = mod(x)
    y1, y2 = forward_shared_input(x, [mod, mod2])
    for out, want in ((y, ref), (y1, ref), (y2, ref2)):
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel_err(out, want.double()) <= TOL[dtype]
    assert rel_err(y, exact(mod, x)) <= TOL[dtype]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("shape", [(4096, 1024), (1000, 3001)])
def test_gpu_centred_layer_matches_reference_in_graphs_and_compile(dtype, T, shape):
    n, m = shape
    _, mod, center = centred_layer(n, m, rank=16, dtype=dtype, device="cuda", tau=1.0)
    x = offset_input(T, n, center, dtype, device="cuda")
    rsparse.set_backend("torch")
    ref = mod(x)
    rsparse.set_backend("auto")
    y = mod(x)
    assert rel_err(y, ref.double()) <= TOL[dtype] and rel_err(y, exact(mod, x)) <= TOL[dtype]
    compiled = torch.compile(mod, fullgraph=True, mode="reduce-overhead")
    for seed in range(3):
        x = offset_input(T, n, center, dtype, device="cuda", seed=seed + 2)
        out = compiled(x).clone()
        assert rel_err(out, exact(mod, x)) <= TOL[dtype]
