"""Save with `save_pretrained`, load with `from_pretrained` (the transformers quantizer plugin)."""

import importlib
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import rsparse
from rsparse.config import FORMAT_VERSION
import rsparse.hf
from rsparse.fuse import linked_groups
from rsparse.nn import RSparseLinear, rsparse_modules
from tests.conftest import FAMILIES, random_tokens, tiny_model


def _sparsified(family="llama3", dtype=torch.float32, rho=0.8, target=0.5):
    model = tiny_model(family, dtype=dtype)
    rsparse.sparsify(model, target, rho=rho, calibration=random_tokens(16, 48, 1), show_progress=False)
    return model


def _folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


@pytest.fixture
def saved(tmp_path):
    model = _sparsified()
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_identical(family, dtype, tmp_path):
    model = _sparsified(family, dtype)
    tokens = random_tokens(2, 40, 2)
    before = {}
    for mode in ("sparse", "auto"):
        rsparse.set_mode(model, mode)
        with torch.no_grad():
            before[mode] = model(tokens).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    assert set(rsparse_modules(loaded)) == set(rsparse_modules(model))
    for name, m in rsparse_modules(loaded).items():
        assert m.budget == model.rsparse_config.layers[name]
        assert m.c.dtype == torch.float32 and m.weight_t.dtype == dtype
    for mode in ("sparse", "auto"):
        rsparse.set_mode(loaded, mode)
        with torch.no_grad():
            assert torch.equal(loaded(tokens).logits, before[mode]), mode


def test_generate_same_tokens_after_reload(saved):
    model, folder = saved
    prompt = random_tokens(1, 12, 3)
    kw = dict(max_new_tokens=32, do_sample=False, pad_token_id=0, min_new_tokens=32)
    loaded = rsparse.from_pretrained(folder)
    assert torch.equal(model.generate(prompt, **kw), loaded.generate(prompt, **kw))


def test_reloaded_model_fuses_its_shared_input_groups(saved):
    model, folder = saved
    groups = linked_groups(model)
    assert len(groups) == 4 and model.rsparse_config.groups == groups  # q/k/v and gate/up per layer
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["groups"] == groups
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert linked_groups(loaded) == groups
    # The link is no state: the checkpoint holds exactly the tensors of the layers.
    assert set(loaded.state_dict()) == set(model.state_dict())
    q = loaded.get_submodule("model.layers.1.self_attn.q_proj")
    assert q.shared_input.members[2] is loaded.get_submodule("model.layers.1.self_attn.v_proj")


def test_config_json_and_model_card(saved):
    model, folder = saved
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "rsparse" and qc["target"] == 0.5 and qc["format_version"] == FORMAT_VERSION
    assert qc["layers"]["model.layers.0.mlp.up_proj"] == model.rsparse_config.layers["model.layers.0.mlp.up_proj"].to_dict()
    assert qc["library_version"] == rsparse.__version__ and qc["seed"] == 0
    card = (folder / "README.md").read_text()
    assert "model-level sparsity | 0.5000" in card and "rsparse.from_pretrained" in card


def test_no_dense_copy_in_checkpoint(tmp_path):
    dense = tiny_model()
    dense.save_pretrained(tmp_path / "dense")
    model = _sparsified(rho=1.0)
    model.save_pretrained(tmp_path / "sparse")
    names = json.loads((tmp_path / "sparse" / "config.json").read_text())["quantization_config"]["layers"]
    from safetensors import safe_open

    with safe_open(tmp_path / "sparse" / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert not any(f"{name}.weight" in keys for name in names)
    assert _folder_bytes(tmp_path / "sparse") <= 1.05 * _folder_bytes(tmp_path / "dense")


def test_registration_is_idempotent(saved):
    _, folder = saved
    rsparse.hf.register()
    importlib.reload(rsparse.hf)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert rsparse_modules(loaded)


def test_from_pretrained_rejects_a_dense_folder(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not an rsparse checkpoint"):
        rsparse.from_pretrained(tmp_path)


def test_unregistered_load_is_loud(saved, monkeypatch, caplog):
    # Without the plugin transformers falls back to a dense model with missing weights; it must not be quiet.
    from transformers.quantizers import auto

    _, folder = saved
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "rsparse")
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "rsparse")
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    with caplog.at_level("WARNING"):
        model = AutoModelForCausalLM.from_pretrained(folder)
    assert not rsparse_modules(model)
    assert "Unknown quantization type, got rsparse" in caplog.text or "MISSING" in caplog.text


def _copy(folder, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def test_missing_tensor_names_the_layer(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    broken = _copy(folder, tmp_path, "missing")
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.tau"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks model.layers.1.mlp.up_proj.tau of rsparse layer model.layers.1.mlp.up_proj"):
        rsparse.from_pretrained(broken)


def test_shape_mismatch_names_the_layer(saved, tmp_path):
    _, folder = saved
    broken = _copy(folder, tmp_path, "shape")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["quantization_config"]["layers"]["model.layers.0.mlp.up_proj"]["r"] += 1
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"rsparse layer model.layers.0.mlp.up_proj: .*lowrank_in has shape"):
        rsparse.from_pretrained(broken)
    # Plain transformers refuses too (transformers 5 through the plugin's check; 4.x with its own error).
    with pytest.raises((ValueError, RuntimeError)):
        AutoModelForCausalLM.from_pretrained(broken)


def test_newer_format_version_is_rejected(saved, tmp_path):
    _, folder = saved
    broken = _copy(folder, tmp_path, "newer")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version 99 is newer than this rsparse supports"):
        rsparse.from_pretrained(broken)


def test_truncated_file_is_an_error(saved, tmp_path):
    _, folder = saved
    broken = _copy(folder, tmp_path, "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        rsparse.from_pretrained(broken)


def test_sharded_checkpoint_round_trip(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 1
    loaded = rsparse.from_pretrained(tmp_path / "sharded")
    tokens = random_tokens(2, 8, 5)
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    assert all(isinstance(m, RSparseLinear) for m in rsparse_modules(loaded).values())


def test_deepcopy_saves_the_copy(tmp_path):
    import copy

    model = _sparsified()
    twin = copy.deepcopy(model)
    rsparse.set_mode(twin, "sparse")
    with torch.no_grad():
        twin.get_submodule("model.layers.0.mlp.up_proj").tau.fill_(123.0)
    twin.save_pretrained(tmp_path)
    loaded = rsparse.from_pretrained(tmp_path)
    assert loaded.get_submodule("model.layers.0.mlp.up_proj").tau.item() == 123.0
    assert model.get_submodule("model.layers.0.mlp.up_proj").tau.item() != 123.0


def test_device_map_and_dtype_pass_through(saved):
    model, folder = saved
    loaded = rsparse.from_pretrained(folder, device_map="cpu", dtype=torch.bfloat16)
    up = loaded.get_submodule("model.layers.0.mlp.up_proj")
    assert up.weight_t.dtype == torch.bfloat16 and up.c.dtype == torch.float32
    assert up.weight_t.device.type == "cpu"
