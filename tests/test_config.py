import json

import pytest

import rsparse
from rsparse.budget import layer_budget
from rsparse.config import FORMAT_VERSION, RSparseConfig


def test_round_trip_through_json():
    cfg = RSparseConfig(target=0.7, rho=0.9, score="magnitude", include=["*mlp*"], seed=3)
    cfg.layers = {"model.layers.0.mlp.up_proj": layer_budget(64, 96, 0.7, 0.9)}
    cfg.groups = [["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]]
    again = RSparseConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.library_version == rsparse.__version__
    assert again.format_version == FORMAT_VERSION


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown RSparseConfig keys \['targte'\]; valid keys are .*'target'"):
        RSparseConfig.from_dict({"targte": 0.5})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target": 1.0}, r"target must be a float in \[0, 1\), got 1.0"),
        ({"target": -0.1}, r"target must be a float in \[0, 1\)"),
        ({"rho": 1.2}, r"rho must be None or a float in \[0, 1\]"),
        ({"score": "l2"}, r"score must be one of \['auto', 'rsparse', 'magnitude'\], got 'l2'"),
        ({"mode": "fast"}, r"mode must be one of \['auto', 'sparse', 'dense'\]"),
        ({"search": "evo"}, r"search must be one of"),
        ({"calibration_samples": 0}, r"calibration_samples must be a positive int"),
        ({"include": "*proj"}, r"include must be a list of fnmatch patterns"),
        ({"format_version": FORMAT_VERSION + 1}, r"newer than this rsparse supports"),
        ({"groups": ["q_proj", "k_proj"]}, r"groups must be a list of lists of layer names"),
    ],
)
def test_invalid_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSparseConfig(**kwargs)


def test_format_1_configs_still_load():
    # Written before the search settings existed: the new fields take their defaults.
    old = {k: v for k, v in rsparse.RSparseConfig().to_dict().items() if k not in (
        "factorization", "min_layer_sparsity", "max_layer_sparsity", "search_evaluations",
        "search_time_limit", "search_holdout")}
    old.update(format_version=1, search="none")
    cfg = rsparse.RSparseConfig.from_dict(old)
    assert cfg.format_version == 1 and cfg.factorization == "activation" and cfg.search == "none"


def test_configs_without_groups_still_load():
    # Written before shared-input groups were recorded: they load, their layers run unfused.
    old = {k: v for k, v in rsparse.RSparseConfig().to_dict().items() if k != "groups"}
    assert rsparse.RSparseConfig.from_dict(old).groups == []


def test_configs_before_4bit_factors_load_as_16_bit():
    # Format 2 knew only factors in the weight's dtype; today's default packs them in 4 bits.
    old = {k: v for k, v in rsparse.RSparseConfig().to_dict().items() if k != "factor_bits"}
    assert rsparse.RSparseConfig.from_dict({**old, "format_version": 2}).factor_bits == 16
    assert rsparse.RSparseConfig.from_dict({**old, "format_version": 1}).factor_bits == 16
    assert rsparse.RSparseConfig.from_dict(old).factor_bits == 4  # a current config without the key: the default
    assert rsparse.RSparseConfig().factor_bits == 4
