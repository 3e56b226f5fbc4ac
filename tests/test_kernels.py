"""Triton kernels of ``rsparse::sparse_linear`` against the PyTorch reference.

Without a GPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set
in conftest.py before anything imports Triton) at small shapes; ``gpu`` tests run the compiled kernels,
CUDA-graph capture and ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch

import rsparse
from rsparse.budget import layer_budget
from rsparse.nn import RSparseLinear, forward_shared_input
from rsparse.ops import backend, sparse_linear_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
# CPU tensors run Triton only under the interpreter (CI); with a GPU these are the gpu tests' job.
needs_triton = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton and TRITON_INTERPRET=1"
)

TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
DTYPES = list(TOL)
# fp32 inputs always take the split-K launch with fp64 sums (`sparse_linear_multi`); the
# one-token paths of `compact_gemv` serve 16-bit inputs only.
HALF_DTYPES = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    backend._backend = "auto"


def make_args(T, n, m, r, dtype, device, active=0.5, bias=False, seed=0):
    """Random layer and input; ``tau`` keeps about ``active`` of the channels (1: all, 0: none)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    x = randn(T, n)
    w = randn(n, m, scale=n**-0.5)
    c = (torch.rand(n, generator=g) + 0.5).to(device)
    score = (x.abs().float() * c).flatten()
    if active >= 1:
        tau = torch.tensor(-1.0)
    elif active <= 0:
        tau = score.max().cpu() + 1
    else:
        tau = score.quantile(1 - active).cpu()
    tau = tau.to(device=device, dtype=torch.float32).reshape(())
    li = randn(n, r, scale=n**-0.5)
    lo = randn(r, m)
    b = randn(m) if bias else None
    return x, w, c, tau, li, lo, b


def exact(x, w, c, tau, li, lo, b):
    """fp64 R-Sparse on the same mask (the mask itself from the fp32 rule)."""
    act = x.abs().float() * c > tau
    xd = x.double()
    y = torch.where(act, xd, 0) @ w.double()
    if li.shape[1]:
        y = y + (torch.where(act, 0, xd) @ li.double()) @ lo.double()
    if b is not None:
        y = y + b.double()
    return y


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(args, dtype, device, active_fraction=1.0):
    from rsparse.kernels import sparse_linear as kernels

    x, w = args[0], args[1]
    out = torch.full((x.shape[0], w.shape[1]), float("nan"), dtype=dtype, device=device)
    y = kernels.sparse_linear(*args, out=out, active_fraction=active_fraction)
    assert not torch.isnan(y).any(), "an output element was not written"
    err = rel_err(y, exact(*args))
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"
    return y


def check_group(projs, dtype, active_fraction=1.0):
    """One launch for projections that share ``x`` (each ``projs`` entry from `make_args`), into
    NaN-filled outputs: every element written, each within tolerance of its fp64 rule."""
    from rsparse.kernels import sparse_linear as kernels

    x = projs[0][0]
    lists = [list(a) for a in zip(*[p[1:] for p in projs])]
    outs = [torch.full((x.shape[0], p[1].shape[1]), float("nan"), dtype=dtype) for p in projs]
    ys = kernels.sparse_linear_multi(x, *lists, out=outs, active_fraction=active_fraction)
    for y, p in zip(ys, projs):
        assert not torch.isnan(y).any()
        assert rel_err(y, exact(x, *p[1:])) <= TOL[dtype]
    return ys


# Small and odd shapes: n, m not multiples of any block; T over the 8-token block.
CPU_SHAPES = [  # T, n, m, r, bias, active
    (1, 70, 45, 0, False, 0.5),
    (3, 130, 77, 5, True, 0.3),
    (8, 64, 300, 17, True, 0.5),
    (11, 33, 20, 3, False, 0.6),
]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
def test_kernel_matches_reference(shape, dtype):
    T, n, m, r, bias, active = shape
    for seed in range(2):  # without rank the workspace is persistent: the second call needs it zero again
        # The second call passes the layer's active share: low-rank items then take fewer rows.
        check(make_args(T, n, m, r, dtype, "cpu", active, bias, seed=seed), dtype, "cpu", [1.0, active][seed])
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("active", [0.0, 1.0])
@pytest.mark.parametrize("r", [0, 4])
def test_all_inactive_and_all_active(active, r):
    dtype = torch.float32
    args = make_args(2, 50, 37, r, dtype, "cpu", active, bias=True, seed=3)
    y = check(args, dtype, "cpu")
    assert _workspace_is_zero()
    if active == 1.0:  # rho = 1 with every channel: the dense product
        x, w, *_, b = args
        torch.testing.assert_close(y, x @ w + b, rtol=1e-5, atol=1e-5)


@needs_triton
def test_multi_projection_matches_single():
    from rsparse.kernels import sparse_linear as kernels

    dtype, T, n = torch.bfloat16, 2, 96
    projs = [make_args(T, n, m, r, dtype, "cpu", 0.4, bias=b, seed=s) for s, (m, r, b) in enumerate([(80, 3, True), (24, 0, False), (40, 7, False)])]
    x = projs[0][0]
    lists = [list(a) for a in zip(*[p[1:] for p in projs])]
    ys = kernels.sparse_linear_multi(x, *lists)
    for y, p in zip(ys, projs):
        args = (x, *p[1:])
        assert rel_err(y, exact(*args)) <= TOL[dtype]
        torch.testing.assert_close(y, kernels.sparse_linear(*args), rtol=0, atol=0)


@needs_triton
def test_backends_agree_through_the_module():
    lin = torch.nn.Linear(96, 72, bias=True)
    x = torch.randn(3, 96)
    budget = layer_budget(96, 72, s=0.5, rho=0.8)
    li, lo = torch.randn(96, budget.r) / 10, torch.randn(budget.r, 72) / 10
    mod = RSparseLinear.from_linear(lin, tau=0.5, lowrank_in=li, lowrank_out=lo, budget=budget, mode="sparse")
    rsparse.set_backend("torch")
    y_torch = mod(x)
    rsparse.set_backend("triton")
    y_triton = mod(x)
    torch.testing.assert_close(y_triton, y_torch, rtol=1e-5, atol=1e-5)
    # The fused helper gives the same numbers as the modules one by one.
    mod2 = RSparseLinear.from_linear(torch.nn.Linear(96, 40), tau=0.3, mode="sparse")
    y1, y2 = forward_shared_input(x, [mod, mod2])
    # The fused launch splits the channels into other chunks: fp32 sums in another order.
    torch.testing.assert_close(y1, y_triton, rtol=1e-5, atol=1e-6)
    rsparse.set_backend("torch")
    torch.testing.assert_close(y2, mod2(x), rtol=1e-5, atol=1e-5)


FP32_SHAPES = CPU_SHAPES + [(1, 200, 130, 9, True, 0.4), (5, 90, 64, 0, True, 1.0), (2, 50, 37, 4, False, 0.0)]


@needs_triton
@pytest.mark.parametrize("shape", FP32_SHAPES, ids=str)
def test_fp32_kernel_equals_the_fp64_rule_to_the_bit(shape):
    # fp32 inputs: the kernels sum in fp64 and round once, as the reference does on the GPU, so the two
    # agree to the bit whatever order the split-K sums take (the fp32 rule alone differs by ~1e-6 here).
    from rsparse.kernels import sparse_linear as kernels

    T, n, m, r, bias, active = shape
    for seed in range(3):
        args = make_args(T, n, m, r, torch.float32, "cpu", active, bias, seed=seed)
        y = kernels.sparse_linear(*args, active_fraction=[1.0, active, 0.5][seed])
        assert torch.equal(y, sparse_linear_reference(*args, fp64=True))
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("T", [1, 3])
def test_fp32_fused_launches_equal_the_fp64_rule_to_the_bit(T):
    from rsparse.kernels import sparse_linear as kernels
    from rsparse.ops import rms_norm_reference

    n = 96
    projs = [make_args(T, n, m, r, torch.float32, "cpu", 0.4, bias=b, seed=s)
             for s, (m, r, b) in enumerate([(80, 3, True), (24, 0, False), (40, 7, False)])]
    x = projs[0][0]
    lists = [list(a) for a in zip(*[p[1:] for p in projs])]
    g = torch.Generator().manual_seed(5)
    weight = torch.rand(n, generator=g) + 0.5
    for norm in (None, weight):  # a folded RMSNorm: PyTorch's, as the reference forms it
        ys = kernels.sparse_linear_multi(x, *lists, norm_weight=norm, norm_eps=1e-5)
        inp = x if norm is None else rms_norm_reference(x, norm, 1e-5)
        for y, p in zip(ys, projs):
            assert torch.equal(y, sparse_linear_reference(inp, *p[1:], fp64=True))
    # A folded residual add, and a gated MLP's product formed first.
    args = projs[0]
    res = torch.randn(T, 80, generator=g)
    y = kernels.sparse_linear(*args, residual=res)
    assert torch.equal(y, sparse_linear_reference(*args, res, fp64=True))
    up = torch.randn(T, n, generator=g)
    y = kernels.sparse_linear_silu_mul(x, up, *args[1:])
    assert torch.equal(y, sparse_linear_reference(torch.nn.functional.silu(x) * up, *args[1:], fp64=True))
    assert _workspace_is_zero()


@needs_triton
def test_opcheck():
    rsparse.set_backend("triton")
    dtype = torch.float32
    args = make_args(2, 40, 24, 3, dtype, "cpu", 0.5, bias=True)
    torch.library.opcheck(torch.ops.rsparse.sparse_linear.default, args)
    x = args[0]
    other = make_args(2, 40, 16, 0, dtype, "cpu", 0.5, seed=1)
    lists = [list(a) for a in zip(args[1:], other[1:])]
    torch.library.opcheck(torch.ops.rsparse.sparse_linear_multi.default, (x, *lists))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_token_sixteen_row_steps_match_the_reference(dtype):
    # The split-K tiles single wide layers take at 25-45 % active (16-row steps over 1024 columns), forced on small
    # odd shapes: rows past the input's end and columns past the output's end are masked.
    from rsparse.kernels import sparse_linear as kernels

    rsparse.set_backend("triton")
    kernels.set_config(dataclasses.replace(kernels.SPLITK_CONFIG, block_k=16), "gemv1")
    try:
        for n, m, bias, active in ((77, 130, True, 0.3), (300, 1100, False, 0.45), (33, 5, True, 1.0)):
            check(make_args(1, n, m, 0, dtype, "cpu", active, bias, seed=3), dtype, "cpu", active)
    finally:
        kernels.set_config(None, "gemv1")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_sixteen_row_steps_of_single_wide_layers_match_the_reference(dtype):
    # choose_config's own pick (no override) for gate/up-shaped layers at 30 and 40 % active, and an odd shape: 16-row
    # steps, under SINGLE_TALL_STEPS_MAX_ACTIVE.
    from rsparse.kernels import sparse_linear as kernels

    rsparse.set_backend("triton")
    for n, m, active in ((4096, 14336, 0.3), (4096, 14336, 0.4), (4100, 9001, 0.35)):
        assert kernels.choose_config(n, m, False, 2, active).block_k == 16
        for seed in range(2):
            check(make_args(1, n, m, 0, dtype, "cuda", active, seed % 2 == 0, seed=seed), dtype, "cuda", active)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("prewait", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_reads_before_the_wait_match_the_reference(prewait, dtype, monkeypatch):
    # PREWAIT on the split-K launch (the one-token code; fp32 batches take it per token): 8- and 16-row steps, with
    # and without a rank, odd shapes, 3 tokens; every output written, within tolerance of the fp64 rule.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "PREWAIT", prewait)
    rsparse.set_backend("triton")
    shapes = [(1, 4096, 14336, 0, False, 0.5), (1, 4096, 14336, 0, True, 0.3), (1, 14336, 4096, 128, True, 0.4),
              (1, 4096, 4096, 0, True, 0.5), (1, 777, 333, 31, True, 0.7), (3, 513, 1025, 9, False, 0.5)]
    for T, n, m, r, bias, active in shapes:
        for seed in range(2):
            check(make_args(T, n, m, r, dtype, "cuda", active, bias, seed=seed), dtype, "cuda", active)


# ---------------------------------------------------------------- two-launch path (one token)


@pytest.fixture
def compact_path():
    """Route one-token launches through `rsparse.kernels.compact_gemv` (opt-in today)."""
    from rsparse.kernels import sparse_linear as kernels

    def use(**kw):
        base = dict(path="compact", block_k=8, block_m=32, programs_per_sm=4)
        kernels.set_config(kernels.Config(**{**base, **kw}), "gemv1")

    yield use
    kernels.set_config(None, "gemv1")


def _workspace_is_zero():
    from rsparse.kernels import compact_gemv

    return all(bool((buf == 0).all()) for buf in compact_gemv._WORKSPACE.values())


COMPACT_SHAPES = [  # n, m, r, bias, active
    (70, 45, 0, False, 0.5),
    (130, 77, 5, True, 0.3),
    (33, 100, 40, False, 0.6),
    (200, 64, 17, True, 0.0),
    (64, 50, 0, True, 1.0),
]


@needs_triton
@pytest.mark.parametrize("prefetch", [0, 1, 2], ids=["plain", "prefetch1", "prefetch2"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", COMPACT_SHAPES, ids=str)
def test_compact_path_matches_reference(shape, dtype, prefetch, compact_path):
    n, m, r, bias, active = shape
    compact_path(prefetch=prefetch)
    for seed in range(2):  # a second call proves the first left its state at zero
        check(make_args(1, n, m, r, dtype, "cpu", active, bias, seed=seed), dtype, "cpu")
    assert _workspace_is_zero()


@needs_triton
def test_compact_path_multi_projection_and_tiles(compact_path):
    # Tiles of 16 columns and steps of 4 rows: many slices per tile, slices that cross the
    # low-rank / active boundary, and projections with and without rank.
    compact_path(block_k=4, block_m=16, programs_per_sm=16, prefetch=2)
    dtype, n = torch.float16, 90
    projs = [make_args(1, n, m, r, dtype, "cpu", 0.4, bias=b, seed=s) for s, (m, r, b) in enumerate([(50, 6, True), (24, 0, False), (40, 11, False)])]
    check_group(projs, dtype)
    assert _workspace_is_zero()


INLINE_SHAPES = [  # n, m, bias, active, programs_per_sm (chunks of 1 to 200 channels)
    (70, 45, False, 0.5, 4),
    (130, 77, True, 0.3, 16),
    (200, 64, True, 0.0, 4),
    (64, 50, True, 1.0, 4),
    (301, 40, False, 0.6, 64),
]


@needs_triton
@pytest.mark.parametrize("prefetch", [0, 1, 2], ids=["plain", "prefetch1", "prefetch2"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", INLINE_SHAPES, ids=str)
def test_inline_path_matches_reference(shape, dtype, prefetch, compact_path, monkeypatch):
    from rsparse.kernels import compact_gemv

    n, m, bias, active, pps = shape
    compact_path(path="inline", prefetch=prefetch, programs_per_sm=pps)
    calls = []
    orig = compact_gemv._inline
    monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: calls.append(1) or orig(*a, **k))
    for seed in range(2):  # a second call proves the first left its state at zero
        check(make_args(1, n, m, 0, dtype, "cpu", active, bias, seed=seed), dtype, "cpu")
    assert calls == [1, 1]  # the one-launch kernel ran, not the two-launch fallback
    assert _workspace_is_zero()


@needs_triton
def test_inline_path_multi_projection_and_rank_fallback(compact_path, monkeypatch):
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels

    compact_path(path="inline", block_k=4, block_m=16, programs_per_sm=16, prefetch=1)
    orig = compact_gemv._inline
    dtype, n = torch.float16, 90
    for ranks, one_launch in (((0, 0, 0), True), ((6, 0, 11), False)):
        projs = [make_args(1, n, m, r, dtype, "cpu", 0.4, bias=b, seed=s)
                 for s, (m, r, b) in enumerate(zip((50, 24, 40), ranks, (True, False, False)))]
        x = projs[0][0]
        lists = [list(a) for a in zip(*[p[1:] for p in projs])]
        outs = [torch.full((1, p[1].shape[1]), float("nan"), dtype=dtype) for p in projs]
        calls = []
        monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: calls.append(1) or orig(*a, **k))
        ys = kernels.sparse_linear_multi(x, *lists, out=outs)
        assert calls == ([1] if one_launch else [])  # a rank sends the group to the two launches
        for y, p in zip(ys, projs):
            assert not torch.isnan(y).any()
            assert rel_err(y, exact(x, *p[1:])) <= TOL[dtype]
    assert _workspace_is_zero()


@needs_triton
def test_inline_path_falls_back_to_two_launches_for_long_chunks(compact_path, monkeypatch):
    from rsparse.kernels import compact_gemv

    # Chunks longer than INLINE_MAX_CHUNK channels (few programs for a wide input) do not fit
    # one program's registers: the two launches serve them, with the same result.
    monkeypatch.setattr(compact_gemv, "INLINE_MAX_CHUNK", 16)
    compact_path(path="inline", programs_per_sm=2)
    calls = []
    orig = compact_gemv._inline
    monkeypatch.setattr(compact_gemv, "_inline", lambda *a, **k: calls.append(1) or orig(*a, **k))
    check(make_args(1, 130, 40, 0, torch.float16, "cpu", 0.5, True, seed=4), torch.float16, "cpu")
    assert not calls
    assert _workspace_is_zero()


@needs_triton
def test_compact_path_leaves_batches_to_splitk(compact_path):
    from rsparse.kernels import compact_gemv

    compact_path()
    calls = []
    orig = compact_gemv.compact_gemv
    compact_gemv.compact_gemv = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        check(make_args(3, 40, 30, 4, torch.float16, "cpu", 0.5, True, seed=5), torch.float16, "cpu")
        assert not calls  # several tokens: run 4's launch
        check(make_args(1, 40, 30, 4, torch.float16, "cpu", 0.5, True, seed=5), torch.float16, "cpu")
        assert calls == [1]
        # fp32 (fp64 sums) never takes the compact path.
        check(make_args(1, 40, 30, 4, torch.float32, "cpu", 0.5, True, seed=5), torch.float32, "cpu")
        assert calls == [1]
    finally:
        compact_gemv.compact_gemv = orig


def test_compact_config_errors(compact_path):
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels

    kernels.set_config(kernels.Config(path="fast"), "gemv1")
    args = make_args(1, 8, 4, 0, torch.float32, "cpu")
    with pytest.raises(ValueError, match="'splitk', 'compact' or 'inline', got 'fast'"):
        kernels.sparse_linear(*args)
    x = torch.zeros(2, 8)
    lists = [[a] for a in args[1:6]] + [[None], [x], 2]
    with pytest.raises(ValueError, match="one token"):
        compact_gemv.compact_gemv(x, *lists)
    with pytest.raises(ValueError, match="prefetch must be 0, 1 or 2 steps, got 3"):
        compact_gemv.compact_gemv(args[0], *lists, prefetch=3)


def test_set_backend_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        rsparse.set_backend("cuda")
    monkeypatch.setattr(backend, "_triton_installed", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        rsparse.set_backend("triton")
    monkeypatch.setattr(backend, "_triton_installed", lambda: True)
    monkeypatch.setattr(backend, "_interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA GPU or TRITON_INTERPRET=1"):
        rsparse.set_backend("triton")
    # Forced earlier, then asked to run CPU tensors with no interpreter: a clear error too.
    backend._backend = "triton"
    args = make_args(1, 8, 4, 0, torch.float32, "cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        torch.ops.rsparse.sparse_linear(*args)


def test_torch_backend_is_the_reference():
    rsparse.set_backend("torch")
    args = make_args(2, 30, 20, 2, torch.float32, "cpu", 0.5, bias=True)
    torch.testing.assert_close(torch.ops.rsparse.sparse_linear(*args), sparse_linear_reference(*args), rtol=0, atol=0)


# ---------------------------------------------------------------- GPU

GPU_SHAPES = [  # T, n, m, r, bias, active
    (1, 4096, 4096, 0, False, 0.5),
    (1, 4096, 1024, 64, True, 0.4),
    (4, 4096, 14336, 300, False, 0.4),
    (8, 1000, 3001, 0, True, 0.3),
    (3, 14336, 4096, 128, False, 0.2),
    (5, 777, 333, 31, True, 0.7),
    (13, 513, 1025, 9, False, 0.5),
    # One token, wide single projections with a rank about half active: 8-step z items (kernel run 17).
    (1, 4096, 14336, 318, True, 0.4),
    (1, 4100, 9001, 250, False, 0.45),
]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_kernel_matches_reference(shape, dtype):
    T, n, m, r, bias, active = shape
    for seed in range(2):  # fresh inputs each time; the second with the layer's active share (kernel run 11)
        check(make_args(T, n, m, r, dtype, "cuda", active, bias, seed=seed), dtype, "cuda", [1.0, active][seed])
    for active in (0.0, 1.0):
        check(make_args(T, n, m, r, dtype, "cuda", active, bias, seed=7), dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("shape", GPU_SHAPES + [(32, 2048, 5632, 40, True, 0.5), (2, 4096, 4096, 0, False, 1.0)], ids=str)
def test_gpu_fp32_backends_agree_to_the_bit(shape):
    # fp32 on the GPU: the Triton kernels and the PyTorch reference both sum in fp64 and round once
    # (`rsparse.ops.reference.sums_in_fp64`), so every output is the same fp32 number.
    T, n, m, r, bias, active = shape
    for seed in range(3):
        args = make_args(T, n, m, r, torch.float32, "cuda", active, bias, seed=seed)
        rsparse.set_backend("triton")
        y = torch.ops.rsparse.sparse_linear(*args)
        rsparse.set_backend("torch")
        ref = torch.ops.rsparse.sparse_linear(*args)
        assert torch.equal(y, ref), f"seed {seed}: {(y - ref).abs().max().item():.3e} apart"
        # ... and the fp32 rule the reference used before is not (the test can fail).
        if seed == 0 and 0.0 < active < 1.0 and n >= 1000:
            assert not torch.equal(y, sparse_linear_reference(*args, fp64=False))


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("ms", [(14336, 14336), (8192, 8192), (4096, 1024, 1024)], ids=str)
@pytest.mark.parametrize("T", [2, 3, 4, 8])
def test_gpu_batched_fused_launch_is_right_on_every_call(T, ms):
    # Regression (2026-12-01): the last program of a tile zeroed the persistent workspace with no
    # barrier after loading its sums; in the batched launch of gate+up at these widths the second
    # projection's outputs then read zeros at random (up to 8 calls in 8 wrong).
    from rsparse.kernels import sparse_linear as kernels

    projs = [make_args(T, 4096, m, 0, torch.bfloat16, "cuda", 0.5, seed=j) for j, m in enumerate(ms)]
    g = torch.Generator(device="cuda").manual_seed(T)
    for call in range(6):  # the weights once (built on the CPU, slow at these widths), a fresh x per call
        x = torch.randn(T, 4096, generator=g, device="cuda").to(torch.bfloat16)
        args = [(x, w, c, (x.abs().float() * c).flatten().quantile(0.5).reshape(()), li, lo, b)
                for _, w, c, _, li, lo, b in projs]
        lists = [list(a) for a in zip(*[a[1:] for a in args])]
        ys = kernels.sparse_linear_multi(x, *lists, active_fraction=0.5)
        for j, (y, a) in enumerate(zip(ys, args)):
            err = rel_err(y, exact(*a))
            assert err <= TOL[torch.bfloat16], f"call {call}, projection {j}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_every_row_loads_give_the_same_sums(dtype):
    # Config.every_row on the shipped batch tiles (4 and 8 warps): rows no token keeps meet zero inputs, so the
    # outputs match the masked loads' and both are within tolerance of the fp64 rule. Not to the bit, unlike under
    # the interpreter: the split-K programs add their partial sums with fp32 atomics in whatever order they finish,
    # so two calls of the same launch may differ in the last bit (kernel run 72: 1 fp16 ulp at full density).
    from rsparse.kernels import sparse_linear as kernels

    try:
        for T, n, m, active in ((2, 777, 333, 1.0), (3, 4096, 1024, 0.5), (4, 4096, 14336, 1.0), (8, 14336, 4096, 0.5),
                                (5, 1000, 4099, 0.8)):
            x, w, c, tau, li, lo, b = make_args(T, n, m, 0, dtype, "cuda", active, True, seed=T)
            tiles = kernels.choose_config(n, m, True, 2, active, tokens=T)
            kernels.set_config(dataclasses.replace(tiles, every_row=False), "dot")
            masked = kernels.sparse_linear(x, w, c, tau, li, lo, b)
            kernels.set_config(dataclasses.replace(tiles, every_row=True), "dot")
            every = kernels.sparse_linear(x, w, c, tau, li, lo, b)
            assert rel_err(every, masked) <= TOL[dtype] / 4, (T, n, m, (masked - every).abs().max().item())
            ref = exact(x, w, c, tau, li, lo, b)
            assert rel_err(every, ref) <= TOL[dtype] and rel_err(masked, ref) <= TOL[dtype], (T, n, m)
            assert not every.isnan().any()
    finally:
        kernels.set_config(None, "dot")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_gpu_fused_gate_up_with_a_rank_is_right_on_both_paths():
    # One token of the fused gate+up pair with a low-rank path: the split-K launch with z items at 40 % active, the
    # compact path at 24 % (RANKED_COMPACT_MAX_ACTIVE, kernel run 64), each on fresh inputs against the fp64 rule.
    from rsparse.kernels import sparse_linear as kernels

    projs = [make_args(1, 4096, 14336, 1024, torch.bfloat16, "cuda", 0.4, seed=j) for j in range(2)]
    g = torch.Generator(device="cuda").manual_seed(0)
    for active, path in ((0.4, "splitk"), (0.24, "compact")):
        assert kernels.choose_config(4096, 2 * 14336, False, 2, active, has_rank=True).path == path
        for call in range(2):
            x = torch.randn(1, 4096, generator=g, device="cuda").to(torch.bfloat16)
            args = [(x, w, c, (x.abs().float() * c).flatten().quantile(1 - active).reshape(()), li, lo, b)
                    for _, w, c, _, li, lo, b in projs]
            lists = [list(a) for a in zip(*[a[1:] for a in args])]
            ys = kernels.sparse_linear_multi(x, *lists, active_fraction=active)
            for j, (y, a) in enumerate(zip(ys, args)):
                err = rel_err(y, exact(*a))
                assert err <= TOL[torch.bfloat16], f"{path}, call {call}, projection {j}: relative error {err:.2e}"


def _gpu_module(rank=32):
    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 3000, bias=True, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    li = torch.randn(1024, rank, device="cuda", dtype=torch.bfloat16) / 32
    lo = torch.randn(rank, 3000, device="cuda", dtype=torch.bfloat16) / 32
    return RSparseLinear.from_linear(lin, tau=0.02, lowrank_in=li, lowrank_out=lo, mode="sparse")


def assert_graph_replays_match_reference(mod, x):
    """Capture ``mod(x)`` in a CUDA graph, then replay it on 3 fresh inputs written into ``x``."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = mod(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias)
        assert rel_err(y, ref.double()) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_gpu_cuda_graph_capture():
    mod = _gpu_module()
    x = torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        mod(x)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    assert_graph_replays_match_reference(mod, x)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_gpu_torch_compile_fullgraph():
    mod = _gpu_module()
    mod2 = RSparseLinear.from_linear(
        torch.nn.Linear(1024, 500, device="cuda", dtype=torch.bfloat16).requires_grad_(False), tau=0.02, mode="sparse"
    )

    def f(x):
        a, b = forward_shared_input(x, [mod, mod2])
        return mod(x) + a, b

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    ya, yb = compiled(x)
    ea, eb = f(x)
    # fp32 atomics add split-K partial sums in any order: equal up to rounding.
    torch.testing.assert_close(ya, ea, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(yb, eb, rtol=1e-2, atol=1e-2)
    compiled_ro = torch.compile(mod, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):
        x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(compiled_ro(x).clone(), mod(x), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("path", ["compact", "inline"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_compact_path_matches_reference(dtype, path, compact_path):
    compact_path(path=path, block_m=1024)
    shapes = [(4096, 14336, 0, False, 0.5), (14336, 4096, 300, True, 0.4), (777, 333, 31, True, 0.7),
              (513, 1025, 9, False, 0.5), (4096, 1024, 64, True, 0.4)]
    if path == "inline":  # the one launch serves layers without rank
        shapes += [(14336, 4096, 0, True, 0.4), (777, 333, 0, True, 0.7), (513, 1025, 0, False, 0.3), (4096, 1024, 0, True, 0.1)]
    for n, m, r, bias, active in shapes:
        for seed in range(2):
            check(make_args(1, n, m, r, dtype, "cuda", active, bias, seed=seed), dtype, "cuda")
        for a in (0.0, 1.0):
            check(make_args(1, n, m, r, dtype, "cuda", a, bias, seed=7), dtype, "cuda")
    torch.cuda.synchronize()
    assert _workspace_is_zero()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("path", ["compact", "inline"])
def test_gpu_compact_path_graph_and_compile(path, compact_path):
    compact_path(path=path, block_m=1024)
    mod = _gpu_module(rank=0 if path == "inline" else 32)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    mod(x)  # compile outside the capture (and create the workspace)
    assert_graph_replays_match_reference(mod, x)
    compiled = torch.compile(mod, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):
        x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(compiled(x).clone(), mod(x), rtol=1e-2, atol=1e-2)
    torch.cuda.synchronize()
    assert _workspace_is_zero()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("path", ["splitk", "compact", "inline"])
def test_gpu_compiled_first_call_keeps_the_workspace_out_of_the_graph_pool(path, compact_path, monkeypatch):
    # A model compiled with CUDA graphs before any eager call: the persistent workspace is
    # created while cudagraph trees warm a graph up, and must not come from the graph's pool
    # (torch raises "tensor(s) in the cudagraph pool not tracked as outputs").  Batch 4 then
    # needs a larger workspace than batch 1, created at its own warm-up.
    from rsparse.kernels import compact_gemv

    torch._dynamo.reset()  # no compiled code or recorded graph of an earlier test is replayed
    monkeypatch.setattr(compact_gemv, "_WORKSPACE", {})
    if path != "splitk":
        compact_path(path=path, block_m=1024)
    mod = _gpu_module(rank=0)
    compiled = torch.compile(mod, fullgraph=True, mode="reduce-overhead")
    calls = []
    real = compact_gemv.compact_gemv
    monkeypatch.setattr(compact_gemv, "compact_gemv", lambda *a, **k: calls.append(k["inline"]) or real(*a, **k))
    for T in (1, 1, 1, 4, 4, 4):
        x = torch.randn(T, 1024, device="cuda", dtype=torch.bfloat16)
        y = compiled(x).clone()
        ref = sparse_linear_reference(x, mod.weight_t, mod.c, mod.tau, mod.lowrank_in, mod.lowrank_out, mod.bias)
        assert rel_err(y, ref.double()) <= 1e-2
    torch.cuda.synchronize()
    assert compact_gemv._WORKSPACE and _workspace_is_zero()
    if path != "splitk":  # the path under test ran (at warm-up and recording: T = 1)
        assert calls and all(inline == (path == "inline") for inline in calls)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
def test_gpu_capture_without_workspace_uses_a_zeroed_buffer_of_its_own(monkeypatch):
    from rsparse.kernels import compact_gemv

    mod = _gpu_module(rank=0)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    mod(x)  # compile the kernel outside the capture
    torch.cuda.synchronize()
    monkeypatch.setattr(compact_gemv, "_WORKSPACE", {})  # ... but capture with no workspace yet
    assert_graph_replays_match_reference(mod, x)
    assert not compact_gemv._WORKSPACE  # nothing persistent was allocated inside the capture


def test_choose_config_takes_compact_or_inline_path_only_for_big_sparse_one_token_layers(monkeypatch):
    from rsparse.kernels import sparse_linear as kernels

    big = (4096, 14336)
    assert kernels.choose_config(*big, False, 2, active_fraction=0.25) == kernels.SINGLE_COMPACT_CONFIG
    assert kernels.choose_config(*big, False, 2, active_fraction=0.3).path == "splitk"  # kernel run 67
    # ... with 16-row steps up to SINGLE_TALL_STEPS_MAX_ACTIVE (kernel run 68), bf16 / fp16 only
    assert kernels.choose_config(*big, False, 2, active_fraction=0.3).block_k == 16
    assert kernels.choose_config(*big, False, 2, active_fraction=0.45).block_k == 16
    assert kernels.choose_config(*big, False, 4, active_fraction=0.3) == kernels.SPLITK_CONFIG
    assert kernels.choose_config(*big, False, 2, active_fraction=0.5) == kernels.SPLITK_CONFIG
    assert kernels.choose_config(*big, False, 2, active_fraction=0.3, has_rank=True).block_k == 8
    assert kernels.choose_config(*big, False, 2, active_fraction=0.5).path == "splitk"  # measured no faster
    assert kernels.choose_config(*big, False, 2).path == "splitk"  # no hint: dense-like
    assert kernels.choose_config(*big, True, 2, active_fraction=0.3).path == "splitk"  # several tokens
    assert kernels.choose_config(4096, 4096, False, 2, active_fraction=0.3).path == "splitk"  # small: unmeasured
    down = (14336, 4096)
    assert kernels.choose_config(*down, False, 2, active_fraction=0.5).path == "inline"
    assert kernels.choose_config(*down, False, 2, active_fraction=0.7).path == "splitk"
    assert kernels.choose_config(*down, False, 2, active_fraction=0.4, has_rank=True).path == "splitk"  # run 11
    # Run 12: with a rank, attention-sized launches take 3 weight items per multiprocessor, big ones 4.
    assert kernels.choose_config(*down, False, 2, active_fraction=0.4, has_rank=True).programs_per_sm == 4
    assert kernels.choose_config(4096, 6144, False, 2, active_fraction=0.4, has_rank=True).programs_per_sm == 3
    assert kernels.choose_config(4096, 6144, False, 2, active_fraction=0.4).programs_per_sm == 4
    # Wide single projections with a rank at about half active: z items of WIDE_Z_STEPS steps.
    assert kernels.choose_config(*big, False, 2, active_fraction=0.4, has_rank=True).z_steps == kernels.WIDE_Z_STEPS
    assert kernels.choose_config(4100, 9001, False, 2, active_fraction=0.45, has_rank=True).z_steps == kernels.WIDE_Z_STEPS
    assert kernels.choose_config(*down, False, 2, active_fraction=0.4, has_rank=True).z_steps is None
    assert kernels.choose_config(4096, 6144, False, 2, active_fraction=0.4, has_rank=True).z_steps is None
    gate_up = (4096, 2 * 14336)
    assert kernels.choose_config(*gate_up, False, 2, active_fraction=0.5) == kernels.COMPACT_CONFIG  # the widest
    assert kernels.choose_config(*gate_up, False, 2, active_fraction=0.6).path == "splitk"
    # RANKED_COMPACT_MAX_ACTIVE: wide layers with a rank take the compact path up to their shape's limit, the split-K
    # launch with z items above it; layers without rank are not affected. Shipped: the pair compact at 24 % active
    # but not at 40 %, gate/up alone never.
    assert kernels.choose_config(*gate_up, False, 2, active_fraction=0.24, has_rank=True).path == "compact"
    for shape, active in ((gate_up, 0.4), (big, 0.24)):
        cfg = kernels.choose_config(*shape, False, 2, active_fraction=active, has_rank=True)
        assert cfg.path == "splitk" and cfg.block_r == 128 and cfg.programs_per_sm == 4
        assert kernels.choose_config(*shape, False, 2, active_fraction=active).path == "compact"
    # The limits of before kernel run 64: compact wherever the shape allows.
    monkeypatch.setattr(kernels, "RANKED_COMPACT_MAX_ACTIVE", {"pair": 1.0, "single": 1.0})
    assert kernels.choose_config(*gate_up, False, 2, active_fraction=0.4, has_rank=True).path == "compact"
    assert kernels.choose_config(*big, False, 2, active_fraction=0.24, has_rank=True).path == "compact"
    # They never widen the compact path beyond the shape's limit without rank.
    assert kernels.choose_config(*big, False, 2, active_fraction=0.4, has_rank=True).path == "splitk"
    assert kernels.choose_config(*gate_up, False, 2, active_fraction=0.6, has_rank=True).path == "splitk"
    kernels.set_config(kernels.Config(path="splitk"), "gemv1")  # an override wins
    try:
        assert kernels.choose_config(*big, False, 2, active_fraction=0.1).path == "splitk"
    finally:
        kernels.set_config(None, "gemv1")


@needs_triton
@pytest.mark.parametrize("card", [None, "NVIDIA H200"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_launches_pass_their_token_count_to_choose_config(dtype, card, monkeypatch):
    # The batch tiles depend on the tokens per call (DOT_DENSE_WIDE_MIN_TOKENS) and on the card (CARD_SETTINGS), so
    # both entry points must say how many and which card; the outputs stay right with either tile setting. The card
    # is the launch device's: here the CPU (none), or an H200 as `card_name` would report it.
    from rsparse.kernels import sparse_linear as kernels

    seen, real = [], kernels.choose_config
    monkeypatch.setattr(kernels, "choose_config", lambda *a, **k: seen.append((k.get("tokens"), real(*a, **k)))
                        or seen[-1][1])
    if card is not None:
        monkeypatch.setattr(kernels, "card_name", lambda device: card)
    few = kernels.DOT_DENSE_FEW_TOKENS_CONFIG
    wide = few if card is not None else kernels.DOT_DENSE_CONFIG  # the H200 keeps 4 warps (CARD_SETTINGS)
    for T in (1, 2, 3, 4, 5):
        seen.clear()
        args = make_args(T, 70, 33, 0, dtype, "cpu", active=0.6, seed=T)
        check(args, dtype, "cpu", active_fraction=0.6)
        gate, up = make_args(T, 70, 1, 0, dtype, "cpu", seed=T + 9)[0], make_args(T, 70, 1, 0, dtype, "cpu", seed=T + 19)[0]
        y = kernels.sparse_linear_silu_mul(gate, up, *args[1:], active_fraction=0.6)
        assert rel_err(y, exact(torch.nn.functional.silu(gate) * up, *args[1:])) <= TOL[dtype]
        assert len(seen) >= 2 and all(t == T for t, _ in seen), (T, seen)
        if T > 1:
            assert all(cfg == (few if T < kernels.DOT_DENSE_WIDE_MIN_TOKENS else wide) for _, cfg in seen), (T, seen)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_row_loads_give_the_same_sums(dtype):
    # Config.every_row (an experiment for batches): every weight row of a step is loaded, and rows that no token
    # keeps meet zero inputs, so the outputs equal those of the masked loads with the same tiles, to the bit; fp32
    # inputs take the one-token code (no tensor-core dot), where the setting does nothing.
    from rsparse.kernels import sparse_linear as kernels

    tiles = kernels.Config(block_k=32, block_m=64, programs_per_sm=2, num_warps=4, num_stages=2)
    try:
        for T, n, m, r, bias, active in ((2, 70, 33, 0, True, 0.5), (3, 129, 65, 0, False, 0.2),
                                         (5, 64, 130, 7, True, 0.6), (8, 100, 40, 0, False, 1.0)):
            args = make_args(T, n, m, r, dtype, "cpu", active, bias, seed=T)
            kernels.set_config(tiles, "dot")
            masked = check(args, dtype, "cpu", active)
            kernels.set_config(dataclasses.replace(tiles, every_row=True), "dot")
            every = check(args, dtype, "cpu", active)
            assert torch.equal(masked, every), (T, n, m)
            gate_up = [args, make_args(T, n, m + 3, 0, dtype, "cpu", active, seed=T + 1)]
            gate_up[1] = (args[0], *gate_up[1][1:])  # one input for both
            check_group(gate_up, dtype, active)
        # The setting reaches the launch: a NaN planted in a row that no token keeps shows only when every row is read.
        x, w, c, tau, li, lo, b = make_args(4, 70, 33, 0, dtype, "cpu", 0.3, seed=11)
        idle = ((x.abs().float() * c <= tau).all(dim=0)).nonzero().flatten()
        assert idle.numel() > 0
        w = w.clone()
        w[idle[0]] = float("nan")
        kernels.set_config(tiles, "dot")
        assert not kernels.sparse_linear(x, w, c, tau, li, lo, b).isnan().any()
        kernels.set_config(dataclasses.replace(tiles, every_row=True), "dot")
        assert kernels.sparse_linear(x, w, c, tau, li, lo, b).isnan().any() == (dtype != torch.float32)
    finally:
        kernels.set_config(None, "dot")


def test_card_settings_give_the_h200_the_four_warp_batch_tiles():
    # CARD_SETTINGS: on a card whose name holds "H200", batches on dense-ish layers take the 4-warp tiles at every
    # token count (kernel runs 49, 50 and 76); every other choice, and every other card, is the module's.
    from rsparse.kernels import sparse_linear as kernels

    h200, h100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"
    few, wide = kernels.DOT_DENSE_FEW_TOKENS_CONFIG, kernels.DOT_DENSE_CONFIG
    assert few.num_warps == 4 and wide.num_warps == 8
    for tokens in (2, 3, 4, 8, 16, None):
        tiles = lambda card: dataclasses.replace(  # noqa: E731  (every_row from 7 tokens at 50 %: the test below)
            kernels.choose_config(4096, 14336, True, 2, 0.5, tokens=tokens, card=card), every_row=False)
        assert tiles(h200) == few, tokens
        for other in (None, h100):
            assert tiles(other) == (few if tokens is not None and tokens < kernels.DOT_DENSE_WIDE_MIN_TOKENS else wide)
    # every_row still follows the union of kept rows, on the H200's tiles
    full = kernels.choose_config(4096, 14336, True, 2, 1.0, tokens=4, card=h200)
    assert full.every_row and dataclasses.replace(full, every_row=False) == few
    assert not kernels.choose_config(4096, 14336, True, 2, 0.5, tokens=4, card=h200).every_row
    for shape in ((4096, 14336), (14336, 4096), (4096, 2 * 14336), (4096, 6144), (100, 37)):
        for use_dot, active, rank, packed in ((False, 0.5, False, False), (False, 0.3, True, False),
                                              (True, 0.3, False, False), (True, 0.5, True, True)):
            args = (*shape, use_dot, 2, active, rank, packed)
            assert kernels.choose_config(*args, tokens=4, card=h200) == kernels.choose_config(*args, tokens=4)
    assert kernels.card_setting("DOT_CONFIG", h200) == kernels.DOT_CONFIG
    assert kernels.card_setting("DOT_DENSE_CONFIG", h100) == wide
    with pytest.raises(ValueError, match="setting of rsparse.kernels.sparse_linear"):
        kernels.card_setting("DOT_DENSE_TILES", h200)
    with pytest.raises(ValueError, match="setting of rsparse.kernels.sparse_linear"):
        kernels.card_setting("card_name", h200)
    assert kernels.card_name(torch.device("cpu")) is None


def test_card_settings_send_down_on_the_h100_to_split_k_from_35_percent_active():
    # CARD_SETTINGS (kernel run 78 on an H100): one token on a down-shaped layer without rank takes the inline path
    # only up to 35 % active there, up to INLINE_MAX_ACTIVE elsewhere; ranked, packed and batched launches and the
    # other shapes choose as on any card.
    from rsparse.kernels import sparse_linear as kernels

    h100, pcie, h200 = "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200"
    down = (14336, 4096, False, 2)
    assert kernels.INLINE_MAX_ACTIVE > 0.5
    for active, on_h100 in ((0.3, "inline"), (0.35, "inline"), (0.4, "splitk"), (0.5, "splitk")):
        assert kernels.choose_config(*down, active, card=h100).path == on_h100, active
        for other in (None, pcie, h200):
            assert kernels.choose_config(*down, active, card=other).path == "inline", (active, other)
    assert kernels.choose_config(*down, 0.5, card=h100) == kernels.SPLITK_CONFIG
    for args in ((*down, 0.5, True), (*down, 0.5, False, True), (14336, 4096, True, 2, 0.5),
                 (4096, 14336, False, 2, 0.5), (4096, 14336, False, 2, 0.3), (4096, 6144, False, 2, 0.5)):
        assert kernels.choose_config(*args, tokens=1, card=h100) == kernels.choose_config(*args, tokens=1), args
    assert kernels.choose_config(*down, 0.5, card=h100, folds_product=True).path == "inline"
    assert kernels.card_setting("INLINE_MAX_ACTIVE", h100) == 0.35
    assert kernels.card_setting("INLINE_MAX_ACTIVE", h200) == kernels.INLINE_MAX_ACTIVE


@needs_triton
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_down_on_the_h100_settings_matches_the_reference(dtype, monkeypatch):
    # The launch the H100's INLINE_MAX_ACTIVE picks for down-shaped layers (split-K instead of inline) gives the
    # reference's outputs at 1 and 3 tokens; fed F.silu(gate) * up, down keeps the inline launch, which forms the
    # product itself (the H100's timings left the product's own launch out), and matches the reference too.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "card_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(kernels, "COMPACT_MIN_ELEMENTS", 1)  # small shapes take the big layers' rules
    seen, real = [], kernels.choose_config
    monkeypatch.setattr(kernels, "choose_config", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for T, n, m in ((1, 130, 33), (1, 96, 40), (3, 130, 33)):
        args = make_args(T, n, m, 0, dtype, "cpu", active=0.45, seed=n + T)
        check(args, dtype, "cpu", active_fraction=0.45)
        gate, up = (make_args(T, n, 1, 0, dtype, "cpu", seed=n + T + s)[0] for s in (5, 6))
        y = kernels.sparse_linear_silu_mul(gate, up, *args[1:], active_fraction=0.45)
        assert rel_err(y, exact(torch.nn.functional.silu(gate) * up, *args[1:])) <= TOL[dtype]
    assert [cfg.path for cfg in seen[:2]] == ["splitk", "inline"], seen


def test_choose_config_gives_several_tokens_taller_tiles_only_on_dense_ish_layers_without_rank():
    # Twenty-seventh session (batch-4 decode): 32x256 tiles faster at 50 % active, slower at 30 % and with a rank.
    from rsparse.kernels import sparse_linear as kernels

    shipped = kernels.DOT_CONFIG
    for shape in ((4096, 14336), (14336, 4096), (4096, 6144), (100, 37)):
        assert kernels.choose_config(*shape, True, 2, active_fraction=0.5) == kernels.DOT_DENSE_CONFIG
        no_hint = kernels.choose_config(*shape, True, 2)  # dense-like, every row read (test below)
        assert dataclasses.replace(no_hint, every_row=False) == kernels.DOT_DENSE_CONFIG
        assert kernels.choose_config(*shape, True, 2, active_fraction=0.3) == shipped
        assert kernels.choose_config(*shape, True, 2, active_fraction=0.5, has_rank=True) == shipped
    assert kernels.DOT_DENSE_CONFIG != shipped
    # 8 warps from 4 tokens, 4 warps for 2-3 (kernel runs 69-70); the token count never changes the other choices
    few, many = kernels.DOT_DENSE_WIDE_MIN_TOKENS - 1, kernels.DOT_DENSE_WIDE_MIN_TOKENS
    assert kernels.DOT_DENSE_CONFIG.num_warps == 8 and kernels.DOT_DENSE_FEW_TOKENS_CONFIG.num_warps == 4
    for tokens, expected in ((2, kernels.DOT_DENSE_FEW_TOKENS_CONFIG), (few, kernels.DOT_DENSE_FEW_TOKENS_CONFIG),
                             (many, kernels.DOT_DENSE_CONFIG), (16, kernels.DOT_DENSE_CONFIG)):
        tiles = kernels.choose_config(4096, 14336, True, 2, active_fraction=0.5, tokens=tokens)
        assert dataclasses.replace(tiles, every_row=False) == expected
        assert kernels.choose_config(4096, 14336, True, 2, active_fraction=0.3, tokens=tokens) == shipped
        assert kernels.choose_config(4096, 14336, True, 2, active_fraction=0.5, has_rank=True, tokens=tokens) == shipped
    assert kernels.choose_config(4096, 14336, False, 2, active_fraction=0.5).block_k == 8  # one token: untouched
    kernels.set_config(shipped, "dot")  # an override wins
    try:
        assert kernels.choose_config(4096, 14336, True, 2, active_fraction=0.9) == shipped
    finally:
        kernels.set_config(None, "dot")


def test_batch_tiles_read_every_row_only_where_nearly_every_row_is_kept(monkeypatch):
    # Config.every_row (kernel run 71): faster where the tokens together keep nearly every row (0 %; 8 tokens at 50 %),
    # slower at 4 tokens and 50 % (93.8 % of rows), so choose_config sets it from 1 - (1 - a) ** T.
    from rsparse.kernels import sparse_linear as kernels

    def every_row(active, tokens, **kw):
        return kernels.choose_config(4096, 14336, True, 2, active_fraction=active, tokens=tokens, **kw).every_row

    assert kernels.expected_kept_rows(0.5, 4) == pytest.approx(0.9375)
    assert kernels.expected_kept_rows(0.5, None) == kernels.expected_kept_rows(0.5, 2)  # unknown: the fewest
    assert kernels.expected_kept_rows(1.0, 2) == 1.0 and kernels.expected_kept_rows(0.0, 8) == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="active fraction"):
            kernels.expected_kept_rows(bad, 4)
    for tokens in (2, 3, 4, 8, 16, None):
        assert every_row(1.0, tokens)  # every channel kept: no extra bytes, the loads wait on nothing
        assert every_row(1.0 + 1e-9, tokens)  # a budget rounded above 1
        assert not every_row(1.0, tokens, has_rank=True)  # the low-rank tiles are untouched
    assert not every_row(0.5, 4) and not every_row(0.5, 6) and every_row(0.5, 7) and every_row(0.5, 8)
    assert not every_row(0.6, 5) and every_row(0.6, 6)
    assert not every_row(0.3, 16)  # below DOT_DENSE_MIN_ACTIVE: the other tiles
    assert not kernels.choose_config(4096, 14336, False, 2, active_fraction=1.0).every_row  # one token
    monkeypatch.setattr(kernels, "EVERY_ROW_MIN_UNION", 1.01)  # the limit decides
    assert not every_row(1.0, 8)


def test_attention_sized_launches_take_the_compact_path_only_when_asked(monkeypatch):
    # SMALL_COMPACT_MAX_ACTIVE is off as shipped (kernel run 37: slower at 70 %); the ablation turns it on.
    from rsparse.kernels import sparse_linear as kernels

    qkv, o = (4096, 6144), (4096, 4096)
    assert kernels.SMALL_COMPACT_MAX_ACTIVE == 0.0
    assert kernels.choose_config(*qkv, False, 2, active_fraction=0.3).path == "splitk"
    monkeypatch.setattr(kernels, "SMALL_COMPACT_MAX_ACTIVE", 0.35)
    assert kernels.choose_config(*qkv, False, 2, active_fraction=0.3).path == "compact"
    assert kernels.choose_config(*o, False, 2, active_fraction=0.3).path == "compact"
    assert kernels.choose_config(*qkv, False, 2, active_fraction=0.5).path == "splitk"  # above the bound
    assert kernels.choose_config(*qkv, True, 2, active_fraction=0.3).path == "splitk"  # several tokens
    assert kernels.choose_config(2048, 2048, False, 2, active_fraction=0.3).path == "splitk"  # below the size
    assert kernels.choose_config(8192, 3072, False, 2, active_fraction=0.3).path == "splitk"  # tall (n >= 2 m)


@needs_triton
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused"])
def test_layers_pass_their_budget_active_fraction_to_the_kernel(fused, monkeypatch):
    from rsparse.kernels import sparse_linear as kernels

    rsparse.set_backend("triton")
    seen = []
    orig = kernels.choose_config
    monkeypatch.setattr(kernels, "choose_config", lambda *a, **k: seen.append(a[4] if len(a) > 4 else k.get("active_fraction")) or orig(*a, **k))
    torch.manual_seed(0)
    mods = []
    for m, s in [(24, 0.7), (16, 0.4)]:
        lin = torch.nn.Linear(40, m)
        mods.append(RSparseLinear.from_linear(lin, tau=0.5, budget=layer_budget(40, m, s=s, rho=1.0)))
    x = torch.randn(1, 40)
    ys = forward_shared_input(x, mods) if fused else [mods[0](x)]
    assert seen == ([pytest.approx(0.6)] if fused else [pytest.approx(0.3)])  # the group passes its largest
    rsparse.set_backend("torch")
    for y, mod in zip(ys, mods):
        torch.testing.assert_close(y, mod(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("programs_per_sm", [2, 3, 4, 8])
def test_split_k_grid_stays_within_one_wave(programs_per_sm):
    # Kernel run 10: a grid a few items over programs_per_sm x SMs left some multiprocessors one
    # item more than the rest (batch 4: 0.82x -> 1.01x of cuBLAS once it fit).
    from rsparse.kernels import sparse_linear as kernels
    from rsparse.kernels.compact_gemv import cdiv

    target = 132 * programs_per_sm
    for n, ms in [(4096, [14336]), (14336, [4096]), (4096, [4096, 1024, 1024]), (4096, [14336, 14336]), (1000, [3001]), (513, [70])]:
        for block_k, block_m in [(8, 1024), (16, 512), (8, 512)]:
            tiles = sum(cdiv(m, block_m) for m in ms)
            rows = kernels._rows_per_item(n, tiles, block_k, target)
            assert rows % block_k == 0 and rows >= block_k
            items = cdiv(n, rows) * tiles
            assert items <= max(target, tiles), (n, ms, block_k, block_m, rows, items, target)
            assert cdiv(n, rows) * rows >= n


@needs_triton
@pytest.mark.parametrize("lowrank_rows", ["chunk", "density", "density+wave"])
@pytest.mark.parametrize("z_skip", [False, True])
@pytest.mark.parametrize("z_items", [(False, 0), (True, 0), (True, 2)], ids=["z-in-weight-items", "z-items", "z-items-2-steps"])
@pytest.mark.parametrize("T", [1, 3, 18])
def test_low_rank_items_sized_by_density_match_reference(lowrank_rows, z_skip, z_items, T, monkeypatch):
    # Kernel run 11: low-rank items take about as many rows as a weight item loads, the z
    # producers skip the rows of V_r whose channel every token keeps, and z may have items of
    # its own.  Same results in every combination.  Run 12: each call leaves z and its
    # counters zero in the persistent workspace (18 tokens: two token blocks), so the calls of
    # the next dtypes start from a clean state.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "LOWRANK_ROWS", lowrank_rows)
    monkeypatch.setattr(kernels, "Z_SKIP_ACTIVE", z_skip)
    monkeypatch.setattr(kernels, "Z_ITEMS", z_items[0])
    monkeypatch.setattr(kernels, "Z_STEPS", z_items[1])
    for dtype in DTYPES:
        args = make_args(T, 300, 45, 20, dtype, "cpu", active=0.2, bias=True, seed=5)
        check(args, dtype, "cpu", active_fraction=0.2)
        assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("z_steps", [1, 8])
def test_z_steps_of_the_config_match_reference(z_steps):
    # `Config.z_steps` overrides Z_STEPS per launch (WIDE_Z_STEPS for wide single projections).
    from rsparse.kernels import sparse_linear as kernels

    kernels.set_config(kernels.Config(block_k=8, block_m=16, programs_per_sm=4, block_kz=16, block_r=32,
                                      z_steps=z_steps), "gemv1")
    try:
        for dtype in DTYPES:
            args = make_args(1, 300, 45, 20, dtype, "cpu", active=0.4, bias=False, seed=7)
            check(args, dtype, "cpu", active_fraction=0.4)
            assert _workspace_is_zero()
    finally:
        kernels.set_config(None, "gemv1")


@needs_triton
@pytest.mark.parametrize("ahead", [False, True], ids=["plain", "xc-ahead"])
@pytest.mark.parametrize("T", [1, 3])
def test_next_step_loaded_ahead_matches_reference(ahead, T, monkeypatch):
    # Kernel run 13, one token: weight items load the next step's x and c while the current rows
    # are in flight (XC_AHEAD).  Tiles of 16 columns give several tiles per projection; 300
    # channels over few items give long chunks, 70 short ones.  Batches (T = 3) ignore the switch.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "XC_AHEAD", ahead)
    kernels.set_config(kernels.Config(block_k=8, block_m=16, programs_per_sm=8, block_kz=16, block_r=32), "gemv1")
    try:
        for dtype in DTYPES:
            for n, m, r, active in [(300, 45, 20, 0.2), (70, 33, 7, 0.6), (90, 16, 50, 0.5), (64, 40, 0, 0.5)]:
                check(make_args(T, n, m, r, dtype, "cpu", active, bias=True, seed=r), dtype, "cpu", active_fraction=active)
                assert _workspace_is_zero()
            n = 90  # a group: ranks 6, 0, 11
            projs = [make_args(T, n, m, rk, dtype, "cpu", 0.4, bias=b, seed=s)
                     for s, (m, rk, b) in enumerate([(50, 6, True), (24, 0, False), (40, 11, False)])]
            check_group(projs, dtype, active_fraction=0.4)
            assert _workspace_is_zero()
    finally:
        kernels.set_config(None, "gemv1")


@needs_triton
@pytest.mark.parametrize("prewait", [1, 2])
@pytest.mark.parametrize("T", [1, 3])
def test_reads_before_the_wait_give_the_same_outputs(prewait, T, monkeypatch):
    # PREWAIT: one-token weight items load tau and c (1), and the first step's rows, every one (2), before they
    # wait for the kernel ahead; the first step then takes its products from those rows. The outputs must equal,
    # to the bit (the interpreter runs programs in turn, so the sums meet in the same order), those of PREWAIT 0,
    # including a folded norm, a residual, a group with ranks, short chunks (the first step is the whole chunk),
    # and an inf in an inactive row of a first step, which must not show. fp32 takes the one-token code per token.
    from rsparse.kernels import sparse_linear as kernels

    def both(call):
        monkeypatch.setattr(kernels, "PREWAIT", 0)
        ref = call()
        monkeypatch.setattr(kernels, "PREWAIT", prewait)
        y = call()
        for a, b in zip(ref if isinstance(ref, list) else [ref], y if isinstance(y, list) else [y]):
            assert torch.equal(a, b)
        assert _workspace_is_zero()
        return y

    kernels.set_config(kernels.Config(block_k=8, block_m=16, programs_per_sm=8, block_kz=16, block_r=32), "gemv1")
    try:
        for dtype in DTYPES:
            for n, m, r, active in [(300, 45, 20, 0.2), (70, 33, 7, 0.6), (13, 40, 0, 0.5), (64, 40, 0, 0.5)]:
                args = make_args(T, n, m, r, dtype, "cpu", active, bias=True, seed=r)
                both(lambda: check(args, dtype, "cpu", active_fraction=active))
            x, w, c, tau, li, lo, b = make_args(T, 64, 40, 0, dtype, "cpu", 0.5, seed=3)
            off = (x.abs().float() * c <= tau).all(0).nonzero().flatten()
            assert len(off) > 0
            w = w.clone()
            w[off[0]] = float("inf")  # a row no token keeps: read before the wait with PREWAIT 2, never summed
            y = both(lambda: kernels.sparse_linear(x, w, c, tau, li, lo, b, active_fraction=0.5))
            assert torch.isfinite(y).all()
            n = 90  # a group (ranks 6, 0, 11), a folded norm, a residual
            projs = [make_args(T, n, m, rk, dtype, "cpu", 0.4, bias=bb, seed=s)
                     for s, (m, rk, bb) in enumerate([(50, 6, True), (24, 0, False), (40, 11, False)])]
            both(lambda: check_group(projs, dtype, active_fraction=0.4))
            plain = [p[:4] + (p[4][:, :0], p[5][:0], p[6]) for p in projs]  # no rank: the norm folds in
            lists = [list(a) for a in zip(*[p[1:] for p in plain])]
            g = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5
            both(lambda: kernels.sparse_linear_multi(plain[0][0], *lists, norm_weight=g, norm_eps=1e-5,
                                                     active_fraction=0.4))
            res = make_args(T, n, 50, 0, dtype, "cpu", seed=9)[0][:, :50]
            both(lambda: kernels.sparse_linear(*plain[0], residual=res, active_fraction=0.4))
    finally:
        kernels.set_config(None, "gemv1")


@needs_triton
@pytest.mark.parametrize("path", ["compact", "inline"])
def test_reads_before_the_wait_on_the_compact_paths(path, compact_path, monkeypatch):
    # PREWAIT above 0 on the one-token compact path (its compaction launch reads c, tau and a folded norm's weight
    # first) and the inline launch (c and tau first): the same outputs, to the bit, with a rank (compact), a folded
    # norm, a residual and a gated MLP's product formed in the launch.
    from rsparse.kernels import sparse_linear as kernels

    compact_path(path=path, block_m=16, programs_per_sm=8)
    for dtype in HALF_DTYPES:
        runs = {}
        for prewait in (0, 1):
            monkeypatch.setattr(kernels, "PREWAIT", prewait)
            ys = []
            for n, m, r, active in [(300, 45, 20 if path == "compact" else 0, 0.3), (70, 33, 0, 0.6)]:
                args = make_args(1, n, m, r, dtype, "cpu", active, bias=True, seed=n)
                ys.append(check(args, dtype, "cpu", active_fraction=active))
                res = make_args(1, n, m, 0, dtype, "cpu", seed=1)[0][:, :m]
                ys.append(kernels.sparse_linear(*args, residual=res, active_fraction=active))
                up = make_args(1, n, m, 0, dtype, "cpu", seed=2)[0]
                ys.append(kernels.sparse_linear_silu_mul(args[0], up, *args[1:], active_fraction=active))
                g = torch.rand(n, generator=torch.Generator().manual_seed(3)) + 0.5
                ys += kernels.sparse_linear_multi(args[0], *[[a] for a in args[1:]], norm_weight=g, norm_eps=1e-5,
                                                  active_fraction=active)
                assert _workspace_is_zero()
            runs[prewait] = ys
        for a, b in zip(runs[0], runs[1]):
            assert torch.equal(a, b)


def test_reads_before_the_wait_refuse_other_settings(monkeypatch):
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "PREWAIT", 3)
    args = make_args(1, 40, 24, 0, torch.float32, "cpu", 0.5)
    with pytest.raises(ValueError, match="PREWAIT"):
        kernels.sparse_linear(*args)
    monkeypatch.setattr(kernels, "PREWAIT", 1)
    for cfg in (kernels.Config(prewait=-1), kernels.Config(path="inline", prewait=5)):  # the compact paths too
        with pytest.raises(ValueError, match="Config.prewait"):
            kernels.prewait_of(cfg)


@pytest.mark.parametrize("programs_per_sm", [3, 4, 8])
def test_low_rank_rows_follow_the_expected_density(programs_per_sm, monkeypatch):
    from rsparse.kernels import sparse_linear as kernels
    from rsparse.kernels.compact_gemv import cdiv

    target = 132 * programs_per_sm
    for n, ms, r in [(4096, [14336], 318), (14336, [4096], 318), (4096, [4096, 1024, 1024], 100), (70, [45], 20)]:
        tiles = tuple(cdiv(m, 1024) for m in ms)
        ranks = tuple([r] * len(ms))
        monkeypatch.setattr(kernels, "LOWRANK_ROWS", "chunk")
        assert kernels._item_rows(n, tiles, ranks, 8, target, 0.4) == (kernels._rows_per_item(n, sum(tiles), 8, target),) * 2
        monkeypatch.setattr(kernels, "LOWRANK_ROWS", "density")
        rows, rows_lr = kernels._item_rows(n, tiles, ranks, 8, target, 0.4)
        assert rows_lr % 8 == 0 and abs(rows_lr - max(8, 0.4 * rows)) <= 4
        assert kernels._item_rows(n, tiles, (0,) * len(ms), 8, target, 0.4) == (rows, rows)  # no rank: unchanged
        monkeypatch.setattr(kernels, "LOWRANK_ROWS", "density+wave")
        rows, rows_lr = kernels._item_rows(n, tiles, ranks, 8, target, 0.4)
        items = cdiv(n, rows) * sum(tiles) + sum(cdiv(rk, rows_lr) * t for rk, t in zip(ranks, tiles))
        assert items <= max(target, sum(tiles) * (1 + max(cdiv(rk, rows_lr) for rk in ranks))), (n, ms, rows, rows_lr, items)


# ---------------------------------------------------------------- programmatic dependent launch


def test_pdl_is_off_where_it_cannot_run(monkeypatch):
    from rsparse.kernels import compact_gemv

    monkeypatch.setattr(compact_gemv, "LAUNCH_PDL", True)
    assert not compact_gemv.pdl_enabled(torch.device("cpu"))
    assert not compact_gemv.pdl_enabled(torch.device("cpu"), requested=True)
    monkeypatch.setattr(compact_gemv, "LAUNCH_PDL", False)
    assert not compact_gemv.pdl_enabled(torch.device("cpu"))
    assert compact_gemv.pdl_kwargs(False) == {} and compact_gemv.pdl_kwargs(True) == {"launch_pdl": True}


@needs_triton
def test_pdl_switch_leaves_interpreted_launches_right(monkeypatch):
    # Under the interpreter the switch is ignored (no such launch attribute there): same results.
    from rsparse.kernels import compact_gemv

    monkeypatch.setattr(compact_gemv, "LAUNCH_PDL", True)
    for dtype in (torch.float32, torch.bfloat16):
        check(make_args(1, 70, 45, 5, dtype, "cpu", 0.5, bias=True, seed=3), dtype, "cpu", active_fraction=0.5)
    assert _workspace_is_zero()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("path", ["splitk", "splitk_prewait0", "splitk_prewait2", "compact", "inline"])
def test_gpu_pdl_chain_reads_each_launch_after_the_one_before(path, compact_path, monkeypatch):
    # With programmatic dependent launch a launch's programs may be placed while the launch before
    # it still runs.  In this chain every launch reads the one before's output (as input, RMSNorm
    # input or residual), back to back with no host wait, eagerly and replayed from a CUDA graph:
    # a program that touched memory before its wait would read stale or half-written values.
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels
    from rsparse.ops.reference import rms_norm_reference

    monkeypatch.setattr(compact_gemv, "LAUNCH_PDL", True)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9")
    assert compact_gemv.pdl_enabled(torch.device("cuda"))
    if path.startswith("splitk_prewait"):  # other settings of what a launch reads before its wait (PREWAIT)
        monkeypatch.setattr(kernels, "PREWAIT", int(path[-1]))
    elif path != "splitk":
        compact_path(path=path, block_m=1024)
    n, dtype, eps = 2048, torch.bfloat16, 1e-5
    layers = [make_args(1, n, n, r, dtype, "cuda", 0.5, bias=True, seed=s)[1:] for s, r in enumerate([0, 32, 0, 0, 0])]
    g = torch.rand(n, device="cuda", dtype=dtype) + 0.5

    def chain(x):
        outs = []
        for i, (w, c, tau, li, lo, b) in enumerate(layers):
            if i == 2:  # an RMSNorm input: folded into the launch or a launch of its own
                y = kernels.sparse_linear_multi(x, [w], [c], [tau], [li], [lo], [b], active_fraction=0.5,
                                                norm_weight=g, norm_eps=eps)[0]
            else:  # every other step adds the step before's input as a residual
                y = kernels.sparse_linear(x, w, c, tau, li, lo, b, active_fraction=0.5,
                                          residual=outs[-2] if i >= 3 else None)
            outs.append(y)
            x = y
        return outs

    def assert_right(x, outs):
        for i, ((w, c, tau, li, lo, b), y) in enumerate(zip(layers, outs)):
            inp = rms_norm_reference(x, g, eps) if i == 2 else x
            ref = exact(inp, w, c, tau, li, lo, b)
            if i >= 3:
                ref = ref + outs[i - 2].double()
            assert rel_err(y, ref) <= TOL[dtype], f"{path}, launch {i}: relative error {rel_err(y, ref):.2e}"
            x = y

    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(1, n, generator=gen, device="cuda").to(dtype) for _ in range(16)]
    runs = [chain(x) for x in xs]  # 16 chains issued back to back, checked after one wait
    torch.cuda.synchronize()
    for x, outs in zip(xs, runs):
        assert_right(x, outs)
    xbuf = xs[0].clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = chain(xbuf)
    for x in xs[1:5]:
        xbuf.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert_right(xbuf, outs)
    assert _workspace_is_zero()
