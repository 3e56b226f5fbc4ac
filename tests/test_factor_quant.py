"""4-bit low-rank factors (`rsparse.factor_quant`, ``RSparseConfig(factor_bits=4)``)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import rsparse
from rsparse.budget import layer_budget, model_sparsity
from rsparse.factor_quant import dequantize_factors, fake_quantize_factors, quantize_factors
from rsparse.nn import RSparseLinear, rsparse_modules
from rsparse.ops.reference import sparse_linear_reference
from tests.conftest import random_tokens, tiny_model


@pytest.mark.parametrize("n, r, m", [(7, 5, 9), (64, 16, 33), (6, 1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_on_the_grid_and_within_half_a_step(n, r, m, dtype):
    g = torch.Generator().manual_seed(n * r)
    scale = torch.logspace(0, -3, r)  # components of very different sizes, as real factors have
    a = (torch.randn(n, r, generator=g) * scale).to(dtype)
    b = (torch.randn(r, m, generator=g) * scale[:, None]).to(dtype)
    packed_in, packed_out, quant = quantize_factors(a, b)
    assert packed_in.dtype == torch.uint8 and packed_in.shape == ((n + 1) // 2, r)
    assert packed_out.shape == ((r + 1) // 2, m) and quant.shape == (4, r) and quant.dtype == torch.float32
    a2, b2 = dequantize_factors(packed_in, packed_out, quant, n, dtype)
    assert a2.dtype == dtype and a2.shape == a.shape and b2.shape == b.shape
    # Every value sits within half a step of its component's grid (plus the dtype's rounding).
    slack = 0.5 + 0.02 * (dtype != torch.float32)
    assert ((a2.float() - a.float()).abs() <= quant[1] * slack + 1e-7).all()
    assert ((b2.float() - b.float()).abs() <= quant[3, :, None] * slack + 1e-7).all()
    # Each component has its own range: the smallest one is not wiped out by the largest.
    assert torch.corrcoef(torch.stack([a2[:, -1].float(), a[:, -1].float()]))[0, 1] > 0.9
    # The extremes of every component are on the grid exactly.
    assert torch.allclose(a2.float().amin(0), a.float().amin(0), rtol=1e-2, atol=1e-6)


def test_slices_of_fake_quantized_factors_equal_quantized_slices():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(20, 8, generator=g), torch.randn(8, 12, generator=g)
    full_a, full_b = fake_quantize_factors(a, b)
    part_a, part_b = fake_quantize_factors(a[:, :5], b[:5])
    assert torch.equal(full_a[:, :5], part_a) and torch.equal(full_b[:5], part_b)


def test_quantize_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="lowrank_out must have 4 rows"):
        quantize_factors(torch.randn(6, 4), torch.randn(3, 5))


def test_four_bit_factors_buy_four_times_the_rank():
    b16, b4 = layer_budget(576, 1536, 0.5, 0.7), layer_budget(576, 1536, 0.5, 0.7, factor_bits=4)
    assert b16.r == 62 and b4.r == 251 and b4.factor_bits == 4 and b4.k == b16.k
    assert layer_budget(576, 192, 0.0, 0.0, factor_bits=4).r == 192  # never more than the weight's rank
    with pytest.raises(ValueError, match="factor_bits must be one of"):
        layer_budget(64, 64, 0.5, 0.5, factor_bits=8)
    with pytest.raises(ValueError, match="factor_bits must be one of"):
        rsparse.RSparseConfig(factor_bits=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layer_computes_with_its_dequantized_factors(dtype):
    lin = torch.nn.Linear(33, 17, bias=True).to(dtype)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(33, 6, generator=g).to(dtype), torch.randn(6, 17, generator=g).to(dtype)
    layer = RSparseLinear.from_linear(lin, tau=0.3, lowrank_in=a, lowrank_out=b, mode="sparse", factor_bits=4)
    assert layer.lowrank_in.dtype == torch.uint8 and layer.rank == 6 and "factor_bits=4" in repr(layer)
    a2, b2 = layer.factors()
    assert torch.equal(a2, fake_quantize_factors(a, b)[0]) and not torch.equal(a2, a)
    x = torch.randn(3, 33, generator=g).to(dtype)
    # The op reads the packed factors, each value formed in fp32 (never rounded to the layer's dtype) ...
    a32, b32 = dequantize_factors(layer.lowrank_in, layer.lowrank_out, layer.lowrank_quant, 33, torch.float32)
    expected = sparse_linear_reference(x, layer.weight_t, layer.c, layer.tau, a32, b32, layer.bias)
    assert torch.equal(layer(x), expected)
    # ... so in fp32 it equals the layer on its dequantized factors, and in bf16 it differs by their rounding only.
    on_dequantized = sparse_linear_reference(x, layer.weight_t, layer.c, layer.tau, a2, b2, layer.bias)
    if dtype == torch.float32:
        assert torch.equal(layer(x), on_dequantized)
    else:
        assert torch.allclose(layer(x).float(), on_dequantized.float(), rtol=2e-2, atol=2e-2)
    layer.half()  # the ranges stay fp32, the packed factors uint8
    assert layer.lowrank_quant.dtype == torch.float32 and layer.lowrank_in.dtype == torch.uint8


def _sparsified_4bit():
    model = tiny_model("llama3")
    cfg = rsparse.RSparseConfig(factor_bits=4, search_evaluations=4)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(16, 48, 1), show_progress=False, config=cfg)
    return model


def test_sparsify_with_four_bit_factors_meets_the_target_and_reloads(tmp_path):
    model = _sparsified_4bit()
    layers = rsparse_modules(model)
    assert model.rsparse_config.factor_bits == 4
    assert all(m.factor_bits == 4 and m.budget.factor_bits == 4 for m in layers.values())
    ranked = [m for m in layers.values() if m.rank]
    assert ranked, "the search gave no layer a rank"
    for m in ranked:  # the bytes a layer reads per token stay within its budget
        n, o = m.in_features, m.out_features
        assert m.budget.k * o + 0.25 * m.rank * (n + o) <= (1 - m.budget.s) * n * o + 1e-6
    assert abs(model_sparsity(model.rsparse_config.layers.values()) - 0.5) < 1e-6
    tokens = random_tokens(2, 24, 2)
    rsparse.set_mode(model, "sparse")
    with torch.no_grad():
        before = model(tokens).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, m in rsparse_modules(loaded).items():
        assert m.factor_bits == 4 and m.lowrank_in.dtype == torch.uint8
        assert torch.equal(m.lowrank_in, layers[name].lowrank_in) and torch.equal(m.lowrank_quant, layers[name].lowrank_quant)
    rsparse.set_mode(loaded, "sparse")
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, before)


def test_search_with_four_bit_factors_is_deterministic():
    a, b = _sparsified_4bit(), _sparsified_4bit()
    assert a.rsparse_config.layers == b.rsparse_config.layers


def test_summary_says_the_factors_are_packed():
    model = _sparsified_4bit()
    report = rsparse.summary(model)
    assert all(layer.factor_bits == 4 for layer in report.layers)
    assert "low-rank factors stored in 4 bits" in str(report)
