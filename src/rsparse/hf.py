"""Save and load through transformers: the ``rsparse`` quantizer plugin and `from_pretrained`.

Importing rsparse registers ``quant_method: "rsparse"`` with transformers. A sparsified model
then carries an `RSparseQuantizationConfig` (the `RSparseConfig` with every layer's budget)
in ``model.config.quantization_config``, ``model.save_pretrained(dir)`` writes safetensors
holding exactly the tensors each `RSparseLinear` uses, and
``AutoModelForCausalLM.from_pretrained(dir)`` rebuilds the `RSparseLinear` skeletons from the
config before the weights load into them (DESIGN.md §7).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from rsparse.config import RSparseConfig
from rsparse.fuse import link_groups
from rsparse.fuse_norm import link_norm_layers
from rsparse.fuse_silu import link_silu_mlps
from rsparse.nn import RSparseLinear, replace_module, rsparse_modules

logger = logging.getLogger(__name__)

METHOD = "rsparse"
_TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5


class RSparseQuantizationConfig(QuantizationConfigMixin):
    """The ``quantization_config`` entry of a sparsified model: ``quant_method`` plus `RSparseConfig` fields.

    Unknown keys and a newer ``format_version`` raise `ValueError` (from `RSparseConfig`).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        config = RSparseConfig.from_dict(kwargs)  # validates
        self.quant_method = METHOD
        self.__dict__.update(config.to_dict())

    def to_rsparse_config(self) -> RSparseConfig:
        return RSparseConfig.from_dict({k: v for k, v in self.__dict__.items() if k != "quant_method"})

    @classmethod
    def from_rsparse_config(cls, config: RSparseConfig) -> "RSparseQuantizationConfig":
        return cls(**config.to_dict())


class RSparseHfQuantizer(HfQuantizer):
    """Loads rsparse checkpoints: swaps the configured `nn.Linear` for `RSparseLinear` before weights load."""

    requires_calibration = True  # only checkpoints sparsified by rsparse.sparsify can be loaded

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if _TRANSFORMERS_4 and importlib.util.find_spec("accelerate") is None:
            raise ImportError("loading rsparse checkpoints with transformers 4.x needs accelerate: pip install accelerate")

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        config = self.quantization_config.to_rsparse_config()
        if kwargs.get("checkpoint_files"):  # transformers 5 hands them over: check before loading anything
            check_checkpoint(kwargs["checkpoint_files"], config)
        install_skeletons(model, config)
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        requested = getattr(self, "_requested_dtype", None)
        if isinstance(requested, torch.dtype) and requested != torch.float32:
            # Exact: these were upcast from this dtype. Other buffers (rotary tables) keep their dtype.
            for param in model.parameters():
                param.data = param.data.to(requested)
            for module in rsparse_modules(model).values():
                if module.factor_bits == 16:  # packed factors are uint8 (and their ranges stay fp32)
                    module.lowrank_in.data = module.lowrank_in.data.to(requested)
                    module.lowrank_out.data = module.lowrank_out.data.to(requested)
        _write_card_on_save(model)
        return model

    def update_dtype(self, dtype):
        if not _TRANSFORMERS_4:
            return dtype
        # transformers 4.x casts every floating checkpoint tensor of a quantized model to the model
        # dtype, which would round the fp32 score inputs c and tau: load in fp32, cast back after.
        self._requested_dtype = dtype
        return torch.float32

    update_torch_dtype = update_dtype  # its name before transformers 4.56

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:  # 4.x passes safe_serialization
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        # `generate` compiles the decode step only when the quantizer says it can (the base class
        # says no): the decode path is one custom op with a fake implementation and no host sync.
        return True


def check_checkpoint(files: list[str], config: RSparseConfig) -> None:
    """Check that the safetensors ``files`` hold every tensor of every configured layer, with its shape.

    Raises `ValueError` naming the file for a corrupt or truncated file, and naming the layer for a
    missing tensor or a shape that disagrees with the layer's budget.
    """
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, list[int]] = {}
    for file in files:
        if not str(file).endswith(".safetensors"):
            continue
        try:
            with safe_open(file, framework="pt") as f:
                shapes.update({key: list(f.get_slice(key).get_shape()) for key in f.keys()})
        except SafetensorError as e:
            raise ValueError(f"{file} is not a readable safetensors file (corrupt or truncated?): {e}") from None
    if not shapes:
        return
    for name, b in config.layers.items():
        expected = {
            "weight_t": [b.in_features, b.out_features], "c": [b.in_features], "tau": [],
            "lowrank_in": [b.in_features, b.r], "lowrank_out": [b.r, b.out_features],
        }
        if b.factor_bits != 16:  # packed two values a byte, with their ranges (rsparse.factor_quant)
            expected.update({
                "lowrank_in": [(b.in_features + 1) // 2, b.r], "lowrank_out": [(b.r + 1) // 2, b.out_features],
                "lowrank_quant": [4, b.r],
            })
        for tensor, shape in expected.items():
            key = f"{name}.{tensor}"
            if key not in shapes:
                raise ValueError(f"checkpoint lacks {key} of rsparse layer {name}")
            if shapes[key] != shape:
                raise ValueError(
                    f"rsparse layer {name}: {key} has shape {shapes[key]} in the checkpoint, its budget "
                    f"(in={b.in_features}, out={b.out_features}, r={b.r}) needs {shape}"
                )


def install_skeletons(model: nn.Module, config: RSparseConfig) -> None:
    """Replace every linear named in ``config.layers`` by an empty `RSparseLinear` of its budget."""
    for name, budget in config.layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the rsparse config names layer {name}, which this model does not have") from None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"the rsparse config names {name}, which is a {type(linear).__name__}, not nn.Linear")
        if (linear.in_features, linear.out_features) != (budget.in_features, budget.out_features):
            raise ValueError(
                f"{name}: the rsparse config says {budget.in_features}->{budget.out_features}, "
                f"the model has {linear.in_features}->{linear.out_features}"
            )
        new = RSparseLinear(
            budget.in_features, budget.out_features, budget.r, bias=linear.bias is not None,
            mode=config.mode, decode_cutoff=config.decode_cutoff, factor_bits=budget.factor_bits,
            dtype=linear.weight.dtype, device=linear.weight.device,
        )
        new.budget = budget
        replace_module(model, name, new)
    link_groups(model, config.groups)  # fused decode launches, as after sparsify
    link_silu_mlps(model)
    link_norm_layers(model)  # after the groups and MLPs it relies on
    model.rsparse_config = config


def attach(model: nn.Module, config: RSparseConfig) -> None:
    """Mark a freshly sparsified model as an rsparse model so that `save_pretrained` serialises it."""
    qconfig = RSparseQuantizationConfig.from_rsparse_config(config)
    model.config.quantization_config = qconfig
    model.hf_quantizer = RSparseHfQuantizer(qconfig, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = METHOD
    _write_card_on_save(model)


def _write_card_on_save(model: nn.Module) -> None:
    # A partial of a module-level function (not a closure, not a bound method): copy.deepcopy(model)
    # rebinds it to the copy, and the model still pickles (a bound method pickles by its name).
    model.save_pretrained = functools.partial(_save_pretrained_with_card, model)


def _save_pretrained_with_card(self: nn.Module, save_directory, *args: Any, **kwargs: Any):
    result = type(self).save_pretrained(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        write_model_card(self, save_directory)
    return result


def from_pretrained(path_or_repo: str | Path, **kwargs: Any) -> nn.Module:
    """Load a model saved after `rsparse.sparsify`, and check that it really is sparse.

    Delegates to ``AutoModelForCausalLM.from_pretrained`` (``device_map``, ``dtype``, sharded
    checkpoints ... pass through), then verifies that every layer named in the checkpoint's
    rsparse config is an `RSparseLinear` whose tensors all came from the checkpoint.

    Args:
        path_or_repo: a local folder or a Hub repository id.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        The model, with ``model.rsparse_config``.

    Example:

    ```python
    >>> model = rsparse.from_pretrained("out/")  # doctest: +SKIP
    ```
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path_or_repo, **{k: v for k, v in kwargs.items() if k in ("revision", "token", "trust_remote_code")})
    qconfig = getattr(config, "quantization_config", None)
    method = qconfig.get("quant_method") if isinstance(qconfig, dict) else getattr(qconfig, "quant_method", None)
    if method != METHOD:
        raise ValueError(
            f"{path_or_repo} is not an rsparse checkpoint (quantization_config.quant_method is {method!r}); "
            f"sparsify a dense model with rsparse.sparsify first"
        )
    if Path(path_or_repo).is_dir():  # every transformers version: check the files before loading
        rsparse_config = RSparseQuantizationConfig(**(qconfig if isinstance(qconfig, dict) else qconfig.to_dict()))
        check_checkpoint(sorted(map(str, Path(path_or_repo).glob("*.safetensors"))), rsparse_config.to_rsparse_config())
    model, info = AutoModelForCausalLM.from_pretrained(path_or_repo, output_loading_info=True, **kwargs)
    expected = model.rsparse_config.layers if hasattr(model, "rsparse_config") else {}
    modules = rsparse_modules(model)
    lost = sorted(set(expected) - set(modules))
    if not expected or lost:
        raise ValueError(f"{path_or_repo} loaded without rsparse layers {lost[:3] or '(all)'}: is rsparse registered?")
    missing = [key for key in info.get("missing_keys", []) if key.rpartition(".")[0] in modules]
    if missing:
        raise ValueError(f"checkpoint lacks {missing[0]} of rsparse layer {missing[0].rpartition('.')[0]}")
    return model


def write_model_card(model: nn.Module, folder: str | Path) -> None:
    """Write ``README.md`` in ``folder``: base model, library, target, sparsity, seed, how to load."""
    from rsparse.budget import model_sparsity

    cfg: RSparseConfig = model.rsparse_config
    base = getattr(model.config, "_name_or_path", "") or "unknown"
    text = f"""---
library_name: transformers
tags: [rsparse, activation-sparsity]
base_model: {base}
---

# {Path(folder).name}: {base} sparsified with rsparse

R-Sparse (rank-aware activation sparsity) applied with [rsparse](https://pypi.org/project/rsparse/)
{cfg.library_version}: decode tokens read only the weight rows of their active input channels,
plus a low-rank correction for the rest.

| | |
|---|---|
| base model | {base} |
| target sparsity | {cfg.target} |
| model-level sparsity | {model_sparsity(cfg.layers.values()):.4f} over {len(cfg.layers)} linears |
| score rule | {cfg.score} |
| rho | {cfg.rho if cfg.rho is not None else "searched / 1.0"} |
| calibration | {cfg.calibration_source}, {cfg.calibration_samples} x {cfg.calibration_seq_len} tokens |
| seed | {cfg.seed} |

## Load

```python
import rsparse
model = rsparse.from_pretrained("{Path(folder).name}")
# or: import rsparse; AutoModelForCausalLM.from_pretrained(...)  (rsparse must be imported first)
```
"""
    (Path(folder) / "README.md").write_text(text)


def register() -> None:
    """Register the ``rsparse`` method with transformers; safe to call again (also after a module reload)."""
    if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(METHOD)(RSparseQuantizationConfig)
    if METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(METHOD)(RSparseHfQuantizer)
    # After importlib.reload the classes are new objects: point the mappings at them.
    AUTO_QUANTIZATION_CONFIG_MAPPING[METHOD] = RSparseQuantizationConfig
    AUTO_QUANTIZER_MAPPING[METHOD] = RSparseHfQuantizer


register()
