"""The Triton split-K launch reading 4-bit packed low-rank factors (`rsparse.factor_quant`).

Under the interpreter (CI) at small odd shapes, against the fp64 rule on the factors the packed
bytes hold; ``gpu`` tests run the compiled kernels at Llama-3-8B shapes.
"""

from __future__ import annotations

import pytest
import torch

import rsparse
from rsparse.budget import layer_budget
from rsparse.factor_quant import dequantize_factors, quantize_factors
from rsparse.nn import RSparseLinear, forward_shared_input
from rsparse.ops import sparse_linear_reference
from tests.test_kernels import (
    HAS_CUDA, HAS_TRITON, TOL, DTYPES, _workspace_is_zero, check, exact, make_args, needs_triton, rel_err,
)


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    rsparse.set_backend("auto")


def packed(args):
    """``make_args``'s layer with its factors packed: the op's arguments (``lowrank_quant`` last) and the
    fp64 factors those bytes hold (what `exact` must multiply with)."""
    x, w, c, tau, li, lo, b = args
    pin, pout, quant = quantize_factors(li, lo)
    li64, lo64 = dequantize_factors(pin, pout, quant, x.shape[1], torch.float64)
    return (x, w, c, tau, pin, pout, b, quant), (x, w, c, tau, li64, lo64, b)


def check_packed(op_args, fp64_args, dtype, active_fraction=1.0):
    from rsparse.kernels import sparse_linear as kernels

    x, w = op_args[0], op_args[1]
    out = torch.full((x.shape[0], w.shape[1]), float("nan"), dtype=dtype, device=x.device)
    y = kernels.sparse_linear(*op_args[:7], out=out, active_fraction=active_fraction, lowrank_quant=op_args[7])
    assert not torch.isnan(y).any(), "an output element was not written"
    err = rel_err(y, exact(*fp64_args))
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"
    return y


def check_packed_and_plain(args, dtype, active_fraction):
    """The same layer with its factors packed to 4 bits (against the fp64 rule) and as they are (the reference)."""
    check_packed(*packed(args), dtype, active_fraction)
    check(args, dtype, "cpu", active_fraction)

# Odd n (a half-filled last byte of V), odd and even ranks, one token and batches over the 16-token dot block.
PACKED_SHAPES = [  # T, n, m, r, bias, active
    (1, 71, 45, 5, False, 0.5),
    (1, 130, 300, 17, True, 0.3),
    (3, 133, 77, 6, True, 0.3),
    (8, 64, 300, 17, True, 0.5),
    (19, 33, 20, 3, False, 0.6),
]


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", PACKED_SHAPES, ids=str)
def test_packed_kernel_matches_the_fp64_rule(shape, dtype):
    T, n, m, r, bias, active = shape
    for seed in range(2):
        op_args, fp64_args = packed(make_args(T, n, m, r, dtype, "cpu", active, bias, seed=seed))
        check_packed(op_args, fp64_args, dtype, [1.0, active][seed])
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_long_input_wide_z_tiles_match_the_fp64_rule(dtype):
    # PACKED_LONG_INPUT_WIDE_Z: one token, packed factors, an input at least twice the outputs takes z items of
    # 256 ranks over 8-channel steps; other shapes keep 128 ranks. Rank 300 leaves a partial second r-block
    # and n = 517 a partial last z item. On since kernel run 58.
    from rsparse.kernels import sparse_linear as kernels

    assert kernels.PACKED_LONG_INPUT_WIDE_Z
    wide = kernels.choose_config(14336, 4096, False, 2, 0.4, True, True)
    assert (wide.block_r, wide.block_kz, wide.z_steps) == (256, 8, 2 * kernels.Z_STEPS)
    assert kernels.choose_config(4096, 14336, False, 2, 0.4, True, True).block_r == 128
    assert kernels.choose_config(14336, 4096, False, 2, 0.4, True, False).block_r == 128
    small = kernels.choose_config(517, 200, False, 2, 0.4, True, True)
    assert (small.block_r, small.block_kz, small.z_steps) == (256, 8, 2 * kernels.Z_STEPS)
    for seed in range(2):
        check_packed(*packed(make_args(1, 517, 200, 300, dtype, "cpu", 0.4, True, seed=seed)), dtype, 0.4)
    assert _workspace_is_zero()


@needs_triton
@pytest.mark.parametrize("z_steps", [None, 1])
@pytest.mark.parametrize("T", [4, 18])
def test_batched_z_items_of_their_own_match_the_reference(T, z_steps, monkeypatch):
    # DOT_Z_ITEMS: batches get z items of their own, first in the grid, instead of z in the weight items of
    # the first tiles. Packed and plain factors, odd ranks (several r-blocks of 32), two token blocks at
    # T = 18 (each with its own z counter); every call leaves z and the counters zero.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "DOT_Z_ITEMS", True)
    kernels.set_config(kernels.Config(block_k=16, block_m=64, programs_per_sm=3, block_kz=16, block_r=32,
                                      z_steps=z_steps), "dot")
    try:
        for dtype in (torch.float16, torch.bfloat16):
            for r in (37, 70):
                args = make_args(T, 130, 150, r, dtype, "cpu", 0.3, True, seed=r)
                check_packed_and_plain(args, dtype, 0.3)
                assert _workspace_is_zero()
    finally:
        kernels.set_config(None, "dot")


@needs_triton
@pytest.mark.parametrize("div", [1, 2])
def test_shorter_batched_lowrank_items_change_no_result(div, monkeypatch):
    # DOT_LOWRANK_ROWS_DIV only splits the batched (tensor-core) launch's low-rank rows into more
    # items; rank 37 leaves a partial last item, which must still sum every row once, with packed
    # and with plain factors.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "DOT_LOWRANK_ROWS_DIV", div)
    for dtype in (torch.float16, torch.bfloat16):
        args = make_args(4, 130, 300, 37, dtype, "cpu", 0.3, True, seed=6)
        check_packed_and_plain(args, dtype, 0.3)
    assert _workspace_is_zero()


@needs_triton
def test_rank0_packed_factors_stand_in_as_weights_in_plain_launches():
    # A layer the search kept without rank still holds packed (uint8, no column) factors; a launch
    # that is not PACKED compiles its batched dots for the pointer's dtype, and Triton refuses uint8
    # dots on the GPU (the interpreter never reaches them: the rank loop is empty). So those factors
    # must reach such a launch in the activation dtype; a packed launch keeps them as they are.
    from rsparse.kernels.sparse_linear import _factor_args

    x, w, c, tau, li, lo, b = make_args(4, 64, 40, 0, torch.bfloat16, "cpu", 0.5)
    pin, pout, _ = quantize_factors(li, lo)
    assert pin.dtype == torch.uint8 and pin.shape[1] == 0
    (li_,), (lo_,) = _factor_args([w], [pin], [pout], packed_launch=False)
    assert li_ is w and lo_ is w
    (li_,), (lo_,) = _factor_args([w], [pin], [pout], packed_launch=True)
    assert li_ is pin and lo_ is pout
    ranked = make_args(4, 64, 40, 5, torch.bfloat16, "cpu", 0.5)
    (li_,), (lo_,) = _factor_args([w], [ranked[4]], [ranked[5]], packed_launch=False)
    assert li_ is ranked[4] and lo_ is ranked[5]
    # and the op still gives the reference on such a layer at batch 4
    for dtype in (torch.float16, torch.bfloat16):
        args = make_args(4, 64, 40, 0, dtype, "cpu", 0.5, True, seed=8)
        check_packed(*packed(args), dtype, 0.5)


@needs_triton
@pytest.mark.parametrize("T", [1, 4])
def test_packed_kernel_is_the_reference_op(T):
    # The op's two implementations agree: the reference forms the same values offset + step * q.
    for dtype in DTYPES:
        op_args, _ = packed(make_args(T, 90, 50, 7, dtype, "cpu", 0.4, True, seed=3))
        rsparse.set_backend("torch")
        y_ref = torch.ops.rsparse.sparse_linear(*op_args[:7], 0.4, None, op_args[7])
        rsparse.set_backend("triton")
        y = torch.ops.rsparse.sparse_linear(*op_args[:7], 0.4, None, op_args[7])
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
        if dtype == torch.float32:  # fp64 sums in both, rounded once
            assert torch.equal(
                y, sparse_linear_reference(*op_args[:7], None, op_args[7], fp64=True)
            )


@needs_triton
@pytest.mark.parametrize("T", [1, 3])
def test_fused_launch_mixes_packed_plain_and_rank_zero(T):
    # q/k/v-like groups: a packed projection, a plain one with a rank, one without: every output
    # within tolerance of its own rule, every element written (two launches: packed, then the rest).
    from rsparse.kernels import sparse_linear as kernels

    dtype, n = torch.bfloat16, 97
    raw = [make_args(T, n, m, r, dtype, "cpu", 0.4, bias=b, seed=s)
           for s, (m, r, b) in enumerate([(80, 5, True), (24, 3, False), (40, 0, False), (33, 8, True)])]
    x = raw[0][0]
    p0, e0 = packed(raw[0])
    p3, e3 = packed(raw[3])
    op = [p0[:7], raw[1], raw[2], p3[:7]]
    quant = [p0[7], None, None, p3[7]]
    rules = [e0, raw[1], raw[2], e3]
    lists = [list(a) for a in zip(*[p[1:] for p in op])]
    outs = [torch.full((T, p[1].shape[1]), float("nan"), dtype=dtype) for p in op]
    ys = kernels.sparse_linear_multi(x, *lists, out=outs, active_fraction=0.4, lowrank_quant=quant)
    for y, rule in zip(ys, rules):
        assert not torch.isnan(y).any()
        assert rel_err(y, exact(x, *rule[1:])) <= TOL[dtype]
    # Without the plain rank the group is one launch with packed factors and a rank-0 projection.
    ys = kernels.sparse_linear_multi(x, *[a[:1] + a[2:] for a in lists], lowrank_quant=[quant[0], None, quant[3]])
    for y, rule in zip(ys, [rules[0], rules[2], rules[3]]):
        assert rel_err(y, exact(x, *rule[1:])) <= TOL[dtype]
    assert _workspace_is_zero()


@needs_triton
def test_packed_modules_agree_across_backends():
    # A 4-bit RSparseLinear and a fused group of them: Triton (interpreter) against the PyTorch path.
    torch.manual_seed(0)
    mods = []
    for m in (72, 40):
        budget = layer_budget(96, m, s=0.5, rho=0.8, factor_bits=4)
        li, lo = torch.randn(96, budget.r) / 10, torch.randn(budget.r, m) / 10
        mods.append(RSparseLinear.from_linear(torch.nn.Linear(96, m), tau=0.5, lowrank_in=li, lowrank_out=lo,
                                              budget=budget, mode="sparse", factor_bits=4))
    x = torch.randn(3, 96)
    rsparse.set_backend("torch")
    ref = [mod(x) for mod in mods]
    rsparse.set_backend("triton")
    for y, y_ref in zip([mod(x) for mod in mods] + forward_shared_input(x, mods), ref + ref):
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


@needs_triton
def test_packed_factors_of_the_wrong_shape_are_an_error():
    from rsparse.kernels import sparse_linear as kernels

    op_args, _ = packed(make_args(1, 40, 24, 4, torch.float16, "cpu", 0.5))
    x, w, c, tau, pin, pout, b, quant = op_args
    with pytest.raises(ValueError, match=r"packed factors of projection 0 must be uint8 \(20, 4\)"):
        kernels.sparse_linear(x, w, c, tau, pin[:-1], pout, b, lowrank_quant=quant)
    with pytest.raises(ValueError, match="fp32 ranges"):
        kernels.sparse_linear(x, w, c, tau, pin, pout, b, lowrank_quant=quant.double())


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 4096, 14336, 1100, False, 0.5), (1, 14336, 4096, 1100, False, 0.5),
                                   (4, 4096, 6144, 700, False, 0.5), (8, 4096, 1024, 301, True, 0.3)], ids=str)
def test_gpu_packed_kernel_matches_the_fp64_rule(shape, dtype):
    T, n, m, r, bias, active = shape
    rsparse.set_backend("triton")
    for seed in range(2):
        op_args, fp64_args = packed(make_args(T, n, m, r, dtype, "cuda", active, bias, seed=seed))
        check_packed(op_args, fp64_args, dtype, [1.0, active][seed])


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("setting", [("PACKED_LEVELS", "convert"), ("PACKED_LEVELS", "bits"),
                                     ("PACKED_LEVELS", "biased"), ("PACKED_LEVELS", "biased_rows"),
                                     ("PACKED_LEVELS", "byte_rows"), ("PACKED_LEVELS", "byte_rows_z"),
                                     ("DOT_Z_ITEMS", False)], ids=str)
def test_gpu_packed_switches_match_the_fp64_rule(setting, dtype, monkeypatch):
    # Every level setting on the GPU's compiled code, for both shapes (shipped: gate/up "byte_rows_z", down_proj
    # "convert"): one token's level floats, and packed batches on those shapes with z in the weight items (they take
    # z items of their own, PACKED_DOT_Z_CONFIG, unless a forced config says otherwise).
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, *setting)
    if setting[0] == "PACKED_LEVELS":  # for both shapes: down_proj's takes PACKED_LONG_INPUT_LEVELS
        monkeypatch.setattr(kernels, "PACKED_LONG_INPUT_LEVELS", setting[1])
    rsparse.set_backend("triton")
    T = 4 if setting[0] == "DOT_Z_ITEMS" else 1
    if T > 1:  # the tiles these shapes took before kernel run 59: z in the weight items
        kernels.set_config(kernels.PACKED_DOT_CONFIG, "dot")
    try:
        for seed, (n, m) in enumerate([(4096, 14336), (14336, 4096)]):
            op_args, fp64_args = packed(make_args(T, n, m, 1100, dtype, "cuda", 0.5, True, seed=seed))
            check_packed(op_args, fp64_args, dtype, 0.5)
    finally:
        kernels.set_config(None, "dot")


@needs_triton
def test_switches_hold_for_the_factor_kind_they_name():
    # DOT_Z_ITEMS takes True, False, or "packed" / "plain" (one factor kind only).
    from rsparse.kernels.sparse_linear import _switch_on

    assert [_switch_on(v, True) for v in (True, False, "packed", "plain")] == [True, False, True, False]
    assert [_switch_on(v, False) for v in (True, False, "packed", "plain")] == [True, False, False, True]
    with pytest.raises(ValueError, match="'packd'"):
        _switch_on("packd", True)


@needs_triton
@pytest.mark.parametrize("levels", ["convert", "bits", "biased", "biased_rows", "byte_rows", "byte_rows_z"])
@pytest.mark.parametrize("T", [1, 3])
def test_one_token_level_floats_match_the_reference(levels, T, monkeypatch):
    # PACKED_LEVELS: one token's levels as floats by conversion, from their bits (2^23 + q, less 2^23: the same
    # values), or biased (128 + q from their bits, the 128 taken out once per row and step: other roundings, within
    # the tolerances; fp64 sums keep exact levels), in every item or in the low-rank rows only ("biased_rows"), or
    # there a byte row at a time ("byte_rows"; an odd rank leaves the last byte row's high nibble unused), and in the
    # z items too ("byte_rows_z"; an odd input count leaves the last byte row's high nibble unused there).
    # T = 3 in fp32 runs the one-token code once per token.
    from rsparse.kernels import sparse_linear as kernels

    monkeypatch.setattr(kernels, "PACKED_LEVELS", levels)
    monkeypatch.setattr(kernels, "PACKED_LONG_INPUT_LEVELS", levels)
    for dtype in DTYPES:
        shapes = ((300, 130), (130, 300)) + (((301, 130),) if levels == "byte_rows_z" else ())  # long, wide, odd n
        for n, m in shapes:
            for r in (150, 149) if levels.startswith("byte_rows") else (150,):
                args = make_args(T, n, m, r, dtype, "cpu", 0.4, True, seed=7)
                check_packed(*packed(args), dtype, 0.4)
    assert _workspace_is_zero()
    for name, (n, m) in (("PACKED_LEVELS", (32, 64)), ("PACKED_LONG_INPUT_LEVELS", (64, 32))):
        monkeypatch.setattr(kernels, name, "bitwise")
        op_args = packed(make_args(1, n, m, 8, torch.float16, "cpu", 0.4, True))[0]
        with pytest.raises(ValueError, match=f"{name} in .*'bitwise'"):
            kernels.sparse_linear(*op_args[:7], lowrank_quant=op_args[7])
        monkeypatch.setattr(kernels, name, levels)


@needs_triton
def test_packed_levels_follow_the_launch_shape():
    # Kernel runs 59, 60 and 66: biased levels, then byte rows, pay on wide launches (gate/up, q/k/v) and lose on
    # long inputs (down_proj), so the shape picks the setting; n >= 2 * m_total is a long input.
    from rsparse.kernels import sparse_linear as kernels

    code = kernels._PACKED_LEVELS_CODE
    assert kernels._packed_levels_code(4096, 14336) == code[kernels.PACKED_LEVELS] == code["byte_rows_z"]
    assert kernels._packed_levels_code(4096, 6144) == code["byte_rows_z"]
    assert kernels._packed_levels_code(14336, 4096) == code[kernels.PACKED_LONG_INPUT_LEVELS] == code["convert"]
    assert kernels._packed_levels_code(8192, 4096) == code["convert"]
    assert kernels._packed_levels_code(8191, 4096) == code["byte_rows_z"]


@needs_triton
def test_packed_batches_with_z_items_take_three_stages_and_match_the_reference(monkeypatch):
    # Packed batches on the MLP's shapes (at least PACKED_DOT_Z_MIN_ELEMENTS weights) get z items of their own with
    # PACKED_DOT_Z_CONFIG (3 stages, z items of 16 steps); attention's shapes and plain factors keep the z producers
    # in the weight items unless DOT_Z_ITEMS = "packed" forces it for every packed shape.
    from rsparse.kernels import sparse_linear as kernels

    assert kernels.choose_config(4096, 14336, True, 2, 0.5, True, True) == kernels.PACKED_DOT_Z_CONFIG
    assert kernels.choose_config(14336, 4096, True, 2, 0.5, True, True) == kernels.PACKED_DOT_Z_CONFIG
    assert kernels.choose_config(4096, 6144, True, 2, 0.5, True, True) == kernels.PACKED_DOT_CONFIG
    assert kernels.choose_config(4096, 14336, True, 2, 0.5, True, False) == kernels.DOT_CONFIG
    monkeypatch.setattr(kernels, "DOT_Z_ITEMS", "packed")
    assert kernels.choose_config(4096, 6144, True, 2, 0.5, True, True) == kernels.PACKED_DOT_Z_CONFIG
    assert kernels.choose_config(4096, 14336, True, 2, 0.5, True, False) == kernels.DOT_CONFIG
    for dtype in (torch.float16, torch.bfloat16):
        args = make_args(4, 300, 130, 150, dtype, "cpu", 0.4, True, seed=11)
        check_packed_and_plain(args, dtype, 0.4)
    assert _workspace_is_zero()
