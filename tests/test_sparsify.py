"""`rsparse.sparsify` end to end on tiny models of every supported family."""

import pytest
import torch
from torch import nn

import rsparse
from rsparse.nn import RSparseLinear, rsparse_modules
from tests.conftest import FAMILIES, VOCAB, random_tokens, tiny_model


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_target_zero_equals_dense(family, calib, heldout):
    model = tiny_model(family)
    dense = _logits(model, heldout)
    rsparse.sparsify(model, 0.0, calibration=calib, show_progress=False)
    assert rsparse_modules(model) and not any(
        isinstance(m, nn.Linear) for m in model.get_decoder().layers.modules()
    )
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, RSparseLinear)
    for mode in ("sparse", "auto"):
        rsparse.set_mode(model, mode)
        assert _rel(_logits(model, heldout), dense) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_target_half_budget_and_kept_fraction_on_heldout(family, calib, heldout):
    model = tiny_model(family)
    rsparse.sparsify(model, 0.5, calibration=calib, rho=0.9, search="none", show_progress=False)
    report = rsparse.summary(model, tokens=heldout)
    assert abs(report.model_sparsity - 0.5) <= 0.01
    for layer in report.layers:
        assert layer.expected_kept == pytest.approx(0.45)
        # Thresholds were fitted with the layers before already sparse, so they hold downstream.
        assert abs(layer.kept - layer.expected_kept) <= 0.05, layer
    assert model.rsparse_config.layers.keys() == {layer.name for layer in report.layers}


def test_thresholds_see_sparse_upstream_inputs(calib):
    # On the calibration tokens themselves the kept fraction must match almost exactly: any
    # mismatch between calibration-time and inference-time inputs (masks, rotary tables,
    # upstream sparsity) shows up here.
    model = tiny_model("gemma2", layers=3)
    rsparse.sparsify(model, 0.7, calibration=calib, rho=0.8, show_progress=False)
    for layer in rsparse.summary(model, tokens=calib).layers:
        assert abs(layer.kept - layer.expected_kept) <= 0.005, layer


def test_sparse_path_really_drops_channels(calib, heldout):
    model = tiny_model()
    dense = _logits(model, heldout)
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    rsparse.set_mode(model, "sparse")
    sparse = _logits(model, heldout)
    rsparse.set_mode(model, "dense")
    assert _rel(_logits(model, heldout), dense) <= 1e-5
    assert _rel(sparse, dense) > 1e-3


def test_no_second_copy_of_weights(calib):
    # The sparse model holds each weight once (transposed); what it adds is the low-rank factors (packed
    # 4-bit by default, with their ranges) and the per-channel score weights and threshold.
    model = tiny_model()
    dense_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    sparse_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    layers = rsparse_modules(model).values()
    added = sum(t.numel() * t.element_size() for m in layers for n, t in m.named_buffers() if n != "tau" and n != "c")
    assert any(m.rank for m in layers) and added > 0
    assert sparse_bytes <= dense_bytes + added + sum(m.in_features * 4 + 4 for m in layers)
    weight = sum(m.in_features * m.out_features * m.weight_t.element_size() for m in layers)
    assert added <= 0.3 * weight  # the factors stay a fraction of the weights they correct


def test_deterministic_with_seed():
    taus = []
    for _ in range(2):
        model = tiny_model()
        rsparse.sparsify(model, 0.5, seed=3, show_progress=False, config=rsparse.RSparseConfig(calibration_samples=4, calibration_seq_len=24))
        taus.append([m.tau.item() for m in rsparse_modules(model).values()])
        assert model.rsparse_config.calibration_source == "self-generated"
    assert taus[0] == taus[1]


def test_magnitude_score_uses_unit_channel_weights(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, score="magnitude", show_progress=False)
    for m in rsparse_modules(model).values():
        assert torch.equal(m.c, torch.ones_like(m.c))
    assert model.rsparse_config.score == "magnitude"


def test_rank_budget_and_include_exclude(calib):
    model = tiny_model()
    config = rsparse.RSparseConfig(include=["*mlp*"], exclude=["*down_proj"], mode="sparse")
    rsparse.sparsify(model, 0.5, rho=0.8, search="none", calibration=calib, config=config, show_progress=False)
    names = sorted(rsparse_modules(model))
    assert names == sorted(f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj"))
    up = model.get_submodule("model.layers.0.mlp.up_proj")
    # 4-bit factors (the default) cost a quarter of a weight value each: four times the bf16 rank.
    assert up.budget.factor_bits == 4 and up.rank == up.budget.r == int(0.2 * 0.5 * 64 * 96 / (160 * 0.25))
    assert up.mode == "sparse"


def test_generate_runs_on_sparsified_model(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    out = model.generate(calib[:2, :10], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 15)


# --------------------------------------------------------------------------- bad input


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _assert_unchanged(model, snapshot):
    state, types = snapshot
    assert [type(m) for m in model.modules()] == types
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.allclose(now[k], state[k], rtol=0, atol=0, equal_nan=True) for k in state)


@pytest.mark.parametrize("target", [1.0, -0.1, 1.5])
def test_bad_target(target, calib):
    model = tiny_model()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=rf"target must be a float in \[0, 1\), got {target}"):
        rsparse.sparsify(model, target, calibration=calib)
    _assert_unchanged(model, snap)


def test_no_matching_linears(calib):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"no nn.Linear inside model.layers matches include=\['\*'\] exclude=\['\*'\]"):
        rsparse.sparsify(model, 0.5, calibration=calib, config=rsparse.RSparseConfig(exclude=["*"]))
    with pytest.raises(ValueError, match="found no decoder layers"):
        rsparse.sparsify(nn.Sequential(nn.Embedding(4, 4)), 0.5, calibration=calib)


@pytest.mark.parametrize(
    "data,tokenizer,match",
    [
        ([], None, "calibration data is empty"),
        (random_tokens(1, 20, 0), None, "calibration data is too short: 20 tokens"),
        (["a text"], None, "no tokenizer was given"),
    ],
)
def test_bad_calibration_leaves_model_unchanged(data, tokenizer, match):
    model = tiny_model()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        rsparse.sparsify(model, 0.5, calibration=data, tokenizer=tokenizer)
    _assert_unchanged(model, snap)


def test_integer_weights_rejected(calib):
    model = tiny_model()
    proj = model.model.layers[1].mlp.up_proj
    proj.weight = nn.Parameter(proj.weight.data.to(torch.int8), requires_grad=False)
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj has weight dtype torch.int8 .*floating-point"):
        rsparse.sparsify(model, 0.5, calibration=calib)
    _assert_unchanged(model, snap)


def test_quantized_model_rejected(calib):
    model = tiny_model()
    model.is_quantized = True
    model.config.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(ValueError, match="the model is quantized"):
        rsparse.sparsify(model, 0.5, calibration=calib)


def test_nan_activation_names_layer_and_restores_model(calib):
    model = tiny_model(layers=3)
    with torch.no_grad():
        model.model.layers[2].post_attention_layernorm.weight[3] = float("nan")
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=r"at the input of model.layers.2.mlp.gate_proj hold NaN or inf"):
        rsparse.sparsify(model, 0.5, calibration=calib, rho=0.8, show_progress=False)
    # Layers 0 and 1 had been sparsified already: they are back, bit for bit.
    assert not rsparse_modules(model)
    _assert_unchanged(model, snap)


def test_already_sparsified_is_an_error(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    taus = [m.tau.clone() for m in rsparse_modules(model).values()]
    with pytest.raises(ValueError, match=r"already sparsified \(14 RSparseLinear layers\).*load the dense model again"):
        rsparse.sparsify(model, 0.7, calibration=calib)
    assert all(torch.equal(a, m.tau) for a, m in zip(taus, rsparse_modules(model).values()))


def test_bad_config_type(calib):
    with pytest.raises(ValueError, match="config must be an RSparseConfig or None, got dict"):
        rsparse.sparsify(tiny_model(), 0.5, calibration=calib, config={"target": 0.5})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparsify_on_gpu_matches_cpu_reference(dtype, calib, heldout):
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    # Uniform budgets: the search may break a near-tie differently on the two devices.
    # bf16 factors: the whole pipeline (calibration, factors, kernels) agrees across devices.
    plain = rsparse.RSparseConfig(factor_bits=16)
    cpu, gpu = tiny_model(dtype=dtype), tiny_model(dtype=dtype).cuda()
    for model in (cpu, gpu):
        rsparse.sparsify(model, 0.5, calibration=calib, rho=0.8, search="none", show_progress=False, config=plain)
        rsparse.set_mode(model, "sparse")
    assert _rel(_logits(gpu, heldout.cuda()).cpu().float(), _logits(cpu, heldout).float()) < tol
    # 4-bit factors (the default): rounding to 16 levels turns the devices' last-bit differences in the
    # factors into whole steps (4.3 % apart in fp32 on an H100, thirty-third session), so the CPU model
    # takes the GPU's packed factors and the forward passes are compared.
    cpu, gpu = tiny_model(dtype=dtype), tiny_model(dtype=dtype).cuda()
    for model in (cpu, gpu):
        rsparse.sparsify(model, 0.5, calibration=calib, rho=0.8, search="none", show_progress=False)
    assert any(m.lowrank_in.dtype == torch.uint8 for m in rsparse_modules(gpu).values())
    cpu.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()})
    for model in (cpu, gpu):
        rsparse.set_mode(model, "sparse")
    a, b = _logits(cpu, heldout), _logits(gpu, heldout.cuda()).cpu()
    assert _rel(b.float(), a.float()) < tol
    report = rsparse.summary(gpu, tokens=heldout)
    assert all(abs(layer.kept - layer.expected_kept) <= 0.05 for layer in report.layers)
    searched = tiny_model(dtype=dtype).cuda()
    rsparse.sparsify(searched, 0.5, calibration=calib, show_progress=False)
    assert rsparse.summary(searched).model_sparsity == pytest.approx(0.5, abs=1e-6)
    assert all(m.weight_t.is_cuda and m.lowrank_in.is_cuda for m in rsparse_modules(searched).values())
