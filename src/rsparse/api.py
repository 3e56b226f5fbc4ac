"""`rsparse.sparsify`: the whole pipeline, calibrate → factorize → search → install (DESIGN.md §3)."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from typing import Any

import torch
from torch import nn

from rsparse.budget import model_sparsity, uniform_budgets
from rsparse.calibrate import calibration_batches
from rsparse.config import RSparseConfig
from rsparse.hf import attach
from rsparse.fuse import linked_groups
from rsparse.install import install_layers
from rsparse.nn import decoder_layers, rsparse_modules
from rsparse.search import search_budgets

logger = logging.getLogger(__name__)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.no_grad()
def sparsify(
    model: nn.Module,
    target: float = 0.5,
    *,
    calibration: Any = None,
    tokenizer: Any = None,
    search: str = "auto",
    score: str = "auto",
    rho: float | None = None,
    seed: int = 0,
    show_progress: bool = True,
    config: RSparseConfig | None = None,
) -> nn.Module:
    """Sparsify a Hugging Face causal LM in place with R-Sparse and return it.

    Every `nn.Linear` inside the decoder layers (``lm_head`` and embeddings excluded) is
    replaced by an `RSparseLinear` whose threshold is fitted, layer by layer, on the inputs
    it sees once the layers before it are sparse. If anything fails the model is restored.

    Args:
        model (`nn.Module`): a causal LM with floating-point weights (Llama, Mistral, Qwen2/3,
            Gemma 2/3, Phi-3 and other Llama-family architectures).
        target (`float`, defaults to 0.5): model-level sparsity, the weight-count-weighted mean
            of the layers' sparsities, in ``[0, 1)``.
        calibration: ``None`` (text sampled from the model itself: works offline), a list of
            strings (needs ``tokenizer``), a ``LongTensor`` ``[n, seq]`` of token ids, or an
            iterable of such tensors.
        tokenizer: the model's tokenizer, needed when ``calibration`` is text.
        search (`str`, defaults to ``"auto"``): per-layer budget search. ``"auto"`` chooses every
            layer's sparsity and sparse share under the model-level ``target`` to minimise the KL
            divergence from the dense model on held-out calibration tokens (`rsparse.search`);
            ``"none"`` gives every layer sparsity ``target``.
        score (`str`, defaults to ``"auto"``): channel score, ``"rsparse"`` (``|x_j|·‖W[:, j]‖``),
            ``"magnitude"`` (``|x_j|``, the TEAL-style score) or ``"auto"``: the search builds its tables
            under both and keeps the rule whose allocation scores the lower KL end to end (one more
            calibration pass); ``"rsparse"`` with ``search="none"``. The rule used is recorded in the config.
        rho (`float`, *optional*): share of each layer's budget spent on channels (the rest buys
            rank); ``None`` lets the search decide per layer (1.0 with ``search="none"``).
        seed (`int`, defaults to 0): seed of calibration sampling.
        show_progress (`bool`, defaults to `True`): show a progress bar per decoder layer.
        config (`RSparseConfig`, *optional*): further settings (calibration sizes, include/exclude
            patterns, decode cut-off, mode); keyword arguments left at their defaults defer to it.

    Returns:
        The same model, with `RSparseLinear` modules and its settings in ``model.rsparse_config``.

    Calling `sparsify` on a model that already holds `RSparseLinear` modules raises
    `ValueError`: budgets are fitted on the dense model, so load it again to change them.

    Example:

    ```python
    >>> model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")  # doctest: +SKIP
    >>> rsparse.sparsify(model, target=0.5)  # doctest: +SKIP
    >>> print(rsparse.summary(model))  # doctest: +SKIP
    ```
    """
    cfg = _settings(config, target=target, search=search, score=score, rho=rho, seed=seed)
    started = time.perf_counter()
    targets = _target_linears(model, cfg)
    batches, cfg.calibration_source = calibration_batches(
        model, calibration, tokenizer, samples=cfg.calibration_samples, seq_len=cfg.calibration_seq_len,
        batch_size=cfg.calibration_batch_size, seed=cfg.seed,
    )
    shapes = {name: (m.in_features, m.out_features) for name, m in targets.items()}
    was_training = model.training
    model.eval()
    try:
        if cfg.search == "none":
            budgets = uniform_budgets(shapes, cfg.target, 1.0 if cfg.rho is None else cfg.rho, cfg.factor_bits)
            if cfg.score == "auto":
                cfg.score = "rsparse"
        else:
            result = search_budgets(model, targets, batches, cfg, show_progress=show_progress)
            budgets = result.budgets
            cfg.score = result.score  # the rule the budgets were chosen for (recorded in the config)
        replaced, _ = install_layers(model, targets, batches, budgets, cfg, show_progress=show_progress)
    finally:
        model.train(was_training)

    for m in rsparse_modules(model).values():
        m.set_mode(cfg.mode)
    cfg.layers = {name: budgets[name] for name in replaced}
    cfg.groups = linked_groups(model)  # so that loading links them again
    model.rsparse_config = cfg
    attach(model, cfg)  # save_pretrained / from_pretrained support
    logger.info(
        "rsparse: %d linears sparsified, model-level sparsity %.4f, %.1fs",
        len(replaced), model_sparsity(cfg.layers.values()), time.perf_counter() - started,
    )
    return model


def _settings(config: RSparseConfig | None, **explicit: Any) -> RSparseConfig:
    """The config to use: ``config`` (or the defaults) overridden by non-default keyword arguments."""
    if config is not None and not isinstance(config, RSparseConfig):
        raise ValueError(f"config must be an RSparseConfig or None, got {type(config).__name__}")
    defaults = RSparseConfig()
    base = config if config is not None else defaults
    changes = {k: v for k, v in explicit.items() if config is None or v != getattr(defaults, k)}
    return dataclasses.replace(base, **changes, layers={})  # replace() re-validates


def _target_linears(model: nn.Module, cfg: RSparseConfig) -> dict[str, nn.Linear]:
    """The decoder-layer linears to sparsify, after checking the model can be sparsified."""
    existing = rsparse_modules(model)
    if existing:
        raise ValueError(
            f"the model is already sparsified ({len(existing)} RSparseLinear layers); sparsify works on "
            f"dense models: load the dense model again to choose a new target"
        )
    if getattr(model, "is_quantized", False) and getattr(
        getattr(model.config, "quantization_config", None), "get", lambda *_: None
    )("quant_method") not in (None, "gguf"):
        raise ValueError("the model is quantized; rsparse needs floating-point weights (load it unquantized)")
    stack_name, layers = decoder_layers(model)
    targets = {}
    for name, module in layers.named_modules(prefix=stack_name):
        if not isinstance(module, nn.Linear):
            continue
        rel = name[len(stack_name) + 1:]
        if not any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in cfg.include):
            continue
        if any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in cfg.exclude):
            continue
        if module.weight.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{name} has weight dtype {module.weight.dtype} ({type(module).__name__}); rsparse needs "
                f"floating-point weights ({', '.join(str(d) for d in FLOAT_DTYPES)}): load the model unquantized"
            )
        targets[name] = module
    if not targets:
        raise ValueError(
            f"no nn.Linear inside {stack_name} matches include={cfg.include} exclude={cfg.exclude}"
        )
    return targets
