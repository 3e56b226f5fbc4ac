"""A gated MLP's ``F.silu(gate) * up`` formed inside its down projection's decode launch.

Llama-style MLPs (Llama, Mistral, Qwen2/3, ...) compute
``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with ``act_fn`` SiLU. In a compiled decode
step the product is a small elementwise kernel of its own between the gate/up launch and the
down launch, about 1.3 µs plus a gap of about 0.5 µs per layer on an H200
(benchmarks/NOTES.md, decode profile). `link_silu_mlps` gives every such MLP whose
``down_proj`` is an `RSparseLinear` a forward that hands ``gate`` and ``up`` to
`RSparseLinear.forward_silu_mul` instead (one ``rsparse::sparse_linear_silu_mul`` call): the
one-token launch that compacts its own input chunks forms the product as it loads them.

The forward is set on the instance (``module.forward``), never on the class, and only where
the class's forward has exactly the gated form (its code reads ``down_proj``, ``act_fn``,
``gate_proj`` and ``up_proj`` and nothing else) and ``act_fn`` computes ``F.silu``; an instance
forward set by someone else (an offloading hook) is left alone. It keeps the model's call order
(gate before up, so a fused gate/up launch still serves both) and falls back to the class's own
forward when the flag ``rsparse_silu_mul`` is off (`rsparse.fuse.set_fusion`), when ``down_proj``
is not an `RSparseLinear` (after `rsparse.install.restore`) and when ``down_proj`` carries forward
hooks or a forward of its own (the fused call would skip them). Results are the same as without it: the
op is defined as the sparse linear on ``F.silu(gate) * up`` formed in the input dtype, as eager
PyTorch forms it.

In eager decoding on CUDA (`rsparse.eager_graphs`) the forward goes one step further: where gate_proj
and up_proj form a fused group and all three layers take the kernel, the gate/up launch and the down
launch are replayed from one CUDA graph: 0.41-0.44x the host time of replaying them one by one with
the module calls between (benchmarks/NOTES.md, decode run 18).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import rsparse.nn as rsparse_nn
from rsparse import eager_graphs
from rsparse.nn import RSparseLinear, multi_args
from rsparse.ops import backend

__all__ = ["link_silu_mlps", "is_silu_mlp", "set_silu_fusion"]

_GATED_NAMES = ("down_proj", "act_fn", "gate_proj", "up_proj")


def is_silu_mlp(module: nn.Module) -> bool:
    """Whether ``module`` is a gated SiLU MLP whose down projection is an `RSparseLinear`."""
    if not isinstance(getattr(module, "down_proj", None), RSparseLinear):
        return False
    if not all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "act_fn")):
        return False
    code = getattr(type(module).forward, "__code__", None)
    if code is None or code.co_names != _GATED_NAMES:
        return False
    probe = torch.linspace(-12.0, 12.0, 481)
    try:
        return torch.equal(module.act_fn(probe), F.silu(probe))
    except Exception:  # an activation that cannot run on a CPU fp32 tensor is not plain SiLU
        return False


def _silu_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    down = self.down_proj
    if not (getattr(self, "rsparse_silu_mul", False) and isinstance(down, RSparseLinear)) or _observed(down):
        return type(self).forward(self, x)
    if rsparse_nn.direct_call(x) and eager_graphs.is_enabled():
        launches = _whole_mlp_launches(self, x)
        if launches is not None:  # graphs kept beside down_proj, whose `_apply` drops them
            run, state = launches
            y = eager_graphs.call(down, "mlp", run, (x.reshape(-1, x.shape[-1]),), state)
            return y.view(*x.shape[:-1], down.out_features)
    return down.forward_silu_mul(self.gate_proj(x), self.up_proj(x))


def _whole_mlp_launches(mlp: nn.Module, x: torch.Tensor):
    """The whole MLP as one function of ``x`` (the fused gate/up launch, then down_proj's
    SiLU-product launch) and the tensors it reads, where every launch of it takes the kernel;
    ``None`` otherwise.

    An eager decode call of it is then one graph replay (`rsparse.eager_graphs`) instead of two
    plus three module calls: eager decoding is bound by host time. Outputs are the same as the
    layer-by-layer calls', which run the same two launches.
    """
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    group = getattr(gate, "shared_input", None)
    if (
        group is None
        or not group.enabled
        or group.members != [gate, up]
        or _observed(gate)
        or _observed(up)
        or not all(m.takes_kernel(x) and m.weight_t.device == x.device for m in (gate, up))
        or not down.takes_kernel(x.new_empty(()).expand(x.numel() // x.shape[-1], down.in_features))  # its input's shape
        or down.weight_t.device != x.device
    ):
        return None
    tensors, fraction, quant = multi_args([gate, up])
    down_tensors, down_fraction, down_quant = down._op_tensors(), down.expected_active_fraction(), down.factor_ranges()

    def run(x2: torch.Tensor) -> torch.Tensor:
        g, u = backend.run_sparse_linear_multi(x2, *tensors, fraction, lowrank_quant=quant)
        return backend.run_sparse_linear_silu_mul(g, u, *down_tensors, down_fraction, lowrank_quant=down_quant)

    return run, [t for column in tensors for t in column] + list(down_tensors) + list(quant or ()) + [down_quant]


def _observed(module: nn.Module) -> bool:
    # The fused call never runs down_proj's __call__, so hooks on it (rsparse.summary's kept
    # fractions, the search's output records, a user's probes) or a replaced forward (an
    # offloading hook) would be skipped: such a layer gets the model's own forward instead.
    # (A replaced forward is looked up in eager mode only: traced code keeps to the hook dicts,
    # which dynamo reads and guards anyway.)
    hooks = torch.nn.modules.module
    if module._forward_pre_hooks or module._forward_hooks or hooks._global_forward_pre_hooks or hooks._global_forward_hooks:
        return True
    return not torch.compiler.is_compiling() and "forward" in vars(module)


def link_silu_mlps(model: nn.Module) -> int:
    """Give every gated SiLU MLP of ``model`` (see `is_silu_mlp`) the fused forward.

    Args:
        model: a sparsified model (linking again is harmless).

    Returns:
        `int`: the number of MLPs linked.

    Example:

    ```python
    >>> link_silu_mlps(model)  # doctest: +SKIP
    32
    ```
    """
    linked = 0
    for module in model.modules():
        own = vars(module).get("forward")
        if own is not None and not _is_ours(own):
            continue  # someone else's forward (e.g. an offloading hook of accelerate): left alone
        if is_silu_mlp(module):
            # A partial (not a bound method) so that the model still pickles and deep-copies.
            module.forward = functools.partial(_silu_mlp_forward, module)
            module.rsparse_silu_mul = True
            linked += 1
    return linked


def _is_ours(forward) -> bool:
    return isinstance(forward, functools.partial) and forward.func is _silu_mlp_forward


def set_silu_fusion(model: nn.Module, enabled: bool) -> None:
    """Turn the fused product on or off in every linked MLP (called by `rsparse.fuse.set_fusion`)."""
    for module in model.modules():
        if hasattr(module, "rsparse_silu_mul"):
            module.rsparse_silu_mul = enabled
