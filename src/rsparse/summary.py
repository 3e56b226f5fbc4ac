"""`rsparse.summary`: what was sparsified, with which budget, and what it keeps in practice."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rsparse.budget import model_sparsity
from rsparse.nn import RSparseLinear, rsparse_modules
from rsparse.ops import active_mask


@dataclass
class LayerSummary:
    """One sparsified linear: shape, budget, threshold, and optionally the measured kept fraction.

    Example:

    ```python
    >>> worst = max(rsparse.summary(model, tokens).layers, key=lambda l: abs(l.kept - l.expected_kept))  # doctest: +SKIP
    ```
    """

    name: str
    in_features: int
    out_features: int
    s: float
    rho: float
    k: float
    r: int
    tau: float
    expected_kept: float
    kept: float | None = None
    factor_bits: int = 16


@dataclass
class Summary:
    """Result of `rsparse.summary`; ``print(summary)`` shows a table.

    Attributes:
        model_sparsity (`float`): weight-count-weighted mean sparsity of the sparsified linears.
        layers (`list[LayerSummary]`): one entry per `RSparseLinear`, in module order.

    Example:

    ```python
    >>> report = rsparse.summary(model)  # doctest: +SKIP
    >>> report.model_sparsity  # doctest: +SKIP
    0.5
    ```
    """

    model_sparsity: float
    layers: list[LayerSummary] = field(default_factory=list)

    def __str__(self) -> str:
        measured = any(layer.kept is not None for layer in self.layers)
        head = f"{'layer':<40} {'in':>6} {'out':>6} {'s':>5} {'rho':>5} {'k':>8} {'r':>5} {'tau':>10} {'exp.kept':>8}"
        lines = [head + (f" {'kept':>6}" if measured else ""), "-" * (len(head) + (7 if measured else 0))]
        for layer in self.layers:
            line = (
                f"{layer.name:<40} {layer.in_features:>6} {layer.out_features:>6} {layer.s:>5.2f} "
                f"{layer.rho:>5.2f} {layer.k:>8.1f} {layer.r:>5} {layer.tau:>10.4g} {layer.expected_kept:>8.3f}"
            )
            if measured:
                line += f" {layer.kept:>6.3f}" if layer.kept is not None else f" {'-':>6}"
            lines.append(line)
        lines.append(f"model-level sparsity: {self.model_sparsity:.4f} over {len(self.layers)} layers")
        packed = sorted({layer.factor_bits for layer in self.layers if layer.r and layer.factor_bits != 16})
        if packed:  # r counts ranks at these bits: the budget pays factor_bits / 16 of a weight value per value
            lines.append(f"low-rank factors stored in {', '.join(map(str, packed))} bits")
        return "\n".join(lines)


@torch.no_grad()
def summary(model: nn.Module, tokens: torch.Tensor | None = None) -> Summary:
    """Per-layer budgets and thresholds of a sparsified model, and its model-level sparsity.

    Args:
        model: a model sparsified by `rsparse.sparsify` or reloaded.
        tokens (`torch.LongTensor`, *optional*): ``[n, seq]`` token ids. When given, the model
            runs on them with every layer in ``"sparse"`` mode and each layer's measured kept
            fraction of input channels is reported beside the expected one (``k / in``).

    Returns:
        `Summary` with ``model_sparsity`` and ``layers``.

    Example:

    ```python
    >>> print(rsparse.summary(model))  # doctest: +SKIP
    ```
    """
    modules = rsparse_modules(model)
    if not modules:
        raise ValueError("the model holds no RSparseLinear; call rsparse.sparsify(model) first")
    kept = _measure_kept(model, modules, tokens) if tokens is not None else {}
    layers = []
    for name, m in modules.items():
        b = m.budget
        if b is None:
            raise ValueError(f"{name} carries no budget (was it built by hand?)")
        layers.append(
            LayerSummary(
                name, m.in_features, m.out_features, b.s, b.rho, b.k, b.r, float(m.tau),
                b.active_fraction, kept.get(name), m.factor_bits,
            )
        )
    return Summary(model_sparsity([m.budget for m in modules.values()]), layers)


def _measure_kept(model: nn.Module, modules: dict[str, RSparseLinear], tokens: torch.Tensor) -> dict[str, float]:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(f"tokens must be a LongTensor [n, seq], got {getattr(tokens, 'shape', type(tokens))}")
    active = {name: 0 for name in modules}
    seen = {name: 0 for name in modules}

    def make_hook(name):
        def hook(module, args):
            x = args[0].reshape(-1, module.in_features)
            active[name] += int(active_mask(x, module.c, module.tau).sum())
            seen[name] += x.numel()

        return hook

    modes = {name: m.mode for name, m in modules.items()}
    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in modules.items()]
    try:
        for m in modules.values():
            m.set_mode("sparse")
        device = model.get_input_embeddings().weight.device
        model(input_ids=tokens.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for name, m in modules.items():
            m.set_mode(modes[name])
    return {name: active[name] / seen[name] for name in modules if seen[name]}
