"""A decoder layer's residual adds and RMSNorms taken into its sparse launches (one-token decode).

Between rsparse's launches, a compiled decode step of a Llama-style layer runs two small
reductions of its own: ``residual + attention`` fused with ``post_attention_layernorm``, and
``residual + mlp`` fused with the next layer's ``input_layernorm``. On an H200 they are
2.3-2.75 µs each plus a gap, about 190 µs of a 3.6 ms step on Llama-3-8B at target 0.5
(benchmarks/NOTES.md, decode run 27). `link_norm_layers` gives such layers a forward that hands
that work to the launches around it:

* the q/k/v launch reads the residual stream ``h`` and forms ``input_layernorm(h)`` itself: each
  program computes the RMS of the whole row from L2 (``norm_weight`` of
  ``rsparse::sparse_linear_multi``);
* the o_proj launch adds ``h`` where it writes its output (``residual`` of
  ``rsparse::sparse_linear``), so the attention module returns ``h + attention``;
* the gate/up launch forms ``post_attention_layernorm`` of that the same way;
* the down_proj launch (``F.silu(gate) * up`` formed inside, `rsparse.fuse_silu`) adds it again.

Only attention runs between the launches then. Results are the model's own up to rounding: the
ops define the norm with Hugging Face's ``LlamaRMSNorm`` roundings and the add as ``residual + y``
in the model dtype (the PyTorch reference computes exactly the model's ops; the kernels sum the
squares in another order).

The forward is set on the instance, only where the class's forward has Llama's form (its code reads
``input_layernorm``, ``self_attn``, ``post_attention_layernorm`` and ``mlp`` and nothing else: Llama,
Mistral, Qwen2/3, ...), both norms compute ``LlamaRMSNorm``, q/k/v and gate/up are linked fused groups
(`rsparse.fuse`) and the MLP is a linked gated SiLU MLP. A call takes the folded form only for one
token (batch 1 decode), outside eager CUDA calls (which replay per-layer CUDA graphs instead,
`rsparse.eager_graphs`), with every projection taking the sparse op, no hooks on the layer or its
parts, and the flag ``rsparse_fold`` on (`rsparse.fuse.set_fusion`); every other call runs the
class's forward.
"""

from __future__ import annotations

import dis
import functools
import inspect

import torch
from torch import nn

from rsparse.nn import RSparseLinear, direct_call, fused_forward

__all__ = ["link_norm_layers", "is_norm_layer", "set_norm_fusion", "FoldSlot"]

_LAYER_NAMES = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_NORM_NAMES = ("dtype", "to", "torch", "float32", "pow", "mean", "rsqrt", "variance_epsilon", "weight")


class FoldSlot:
    """A residual that the next call of one `RSparseLinear` (o_proj) adds to its output.

    Plain Python state (like the shared-input groups' rounds): set by the folded layer forward just
    before the attention module calls o_proj, taken by that call. Never in the state dict."""

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None


def _code(fn):
    return getattr(inspect.unwrap(fn), "__code__", None)


def _returns_hidden_states(code) -> bool:
    # Every return is `return hidden_states` (transformers 5): the 4.x layers return a tuple
    # (`return outputs`) with the same attribute names, which the folded forward does not.
    instructions = list(dis.get_instructions(code))
    returns = [i for i, ins in enumerate(instructions) if ins.opname == "RETURN_VALUE"]
    return bool(returns) and all(
        i > 0 and instructions[i - 1].opname.startswith("LOAD_FAST") and instructions[i - 1].argval == "hidden_states"
        for i in returns
    )


def _is_llama_norm(norm: nn.Module) -> bool:
    code = _code(type(norm).forward)
    weight = getattr(norm, "weight", None)
    return (
        code is not None
        and code.co_names == _NORM_NAMES
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
        and isinstance(getattr(norm, "variance_epsilon", None), float)
    )


def _group_is(first: RSparseLinear, members: list) -> bool:
    group = getattr(first, "shared_input", None)
    return group is not None and group.members == members


def is_norm_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` is a Llama-form decoder layer whose norms and adds can be folded (see the module doc)."""
    code = _code(type(layer).forward)
    if code is None or code.co_names != _LAYER_NAMES or not _returns_hidden_states(code):
        return False
    from rsparse.fuse_silu import is_silu_mlp

    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    projs = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if not all(isinstance(p, RSparseLinear) for p in projs) or not is_silu_mlp(mlp):
        return False
    if not hasattr(mlp, "rsparse_silu_mul"):  # the MLP is not linked (`rsparse.fuse_silu.link_silu_mlps` first)
        return False
    return (
        _is_llama_norm(layer.input_layernorm)
        and _is_llama_norm(layer.post_attention_layernorm)
        and _group_is(projs[0], projs[:3])
        and isinstance(mlp.gate_proj, RSparseLinear)
        and _group_is(mlp.gate_proj, [mlp.gate_proj, mlp.up_proj])
    )


def _observed(module: nn.Module) -> bool:
    hooks = torch.nn.modules.module
    return bool(
        module._forward_pre_hooks or module._forward_hooks or hooks._global_forward_pre_hooks
        or hooks._global_forward_hooks
    )


def _fold_now(layer: nn.Module, h: torch.Tensor) -> bool:
    """Whether this call takes the folded form (decided from shapes and settings only)."""
    if not getattr(layer, "rsparse_fold", False) or h.numel() != h.shape[-1] or direct_call(h):
        return False
    attn, mlp = layer.self_attn, layer.mlp
    projs = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    # Still the linked structure? (`rsparse.install.restore` puts nn.Linear back; links can be redone.)
    if not all(isinstance(p, RSparseLinear) for p in projs) or attn.o_proj.fold_slot is None:
        return False
    if attn.q_proj.shared_input is None or mlp.gate_proj.shared_input is None:
        return False
    if not (attn.q_proj.shared_input.enabled and mlp.gate_proj.shared_input.enabled and getattr(mlp, "rsparse_silu_mul", False)):
        return False
    one = h.reshape(1, -1)
    for p in projs:
        if _observed(p) or p._parameters["weight_t"].device != h.device or not p.takes_kernel(one[:, :1].expand(1, p.in_features)):
            return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if any(n.weight.dtype != h.dtype or n.weight.device != h.device for n in norms):
        return False
    return not any(_observed(m) for m in (layer, attn, mlp, *norms))


def _folded_forward(layer: nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
    if args or not _fold_now(layer, hidden_states):
        return type(layer).forward(layer, hidden_states, *args, **kwargs)
    attn, mlp = layer.self_attn, layer.mlp
    qkv, slot = attn.q_proj.shared_input, attn.o_proj.fold_slot
    pre, post = layer.input_layernorm, layer.post_attention_layernorm
    # The attention module calls q/k/v on hidden_states (the residual stream) and o_proj once:
    # the q/k/v round forms the norm, o_proj adds the residual, so it returns h + attention.
    qkv.pending_norm = (pre.weight, pre.variance_epsilon)
    slot.residual = hidden_states
    try:
        hidden_states, _ = attn(hidden_states=hidden_states, **kwargs)
    finally:
        unused = qkv.pending_norm is not None or slot.residual is not None
        qkv.pending_norm, slot.residual = None, None
    if unused:  # an attention forward that did not call q/k/v and o_proj as Llama's does
        raise RuntimeError(f"{type(attn).__name__} did not take the folded norm and residual; unlink with set_fusion(model, False)")
    gate, up = fused_forward(hidden_states, [mlp.gate_proj, mlp.up_proj], norm=(post.weight, post.variance_epsilon))
    return mlp.down_proj.forward_silu_mul(gate, up, residual=hidden_states)


def link_norm_layers(model: nn.Module) -> int:
    """Give every foldable decoder layer of ``model`` (see `is_norm_layer`) the folded forward.

    Call after the shared-input groups and the SiLU MLPs are linked (`rsparse.install` and
    `rsparse.hf` do). Linking again is harmless.

    Returns:
        `int`: the number of layers linked.

    Example:

    ```python
    >>> link_norm_layers(model)  # doctest: +SKIP
    32
    ```
    """
    linked = 0
    for module in model.modules():
        own = vars(module).get("forward")
        if own is not None and not _is_ours(own):
            continue  # someone else's forward (an offloading hook): left alone
        if is_norm_layer(module):
            module.self_attn.o_proj.fold_slot = FoldSlot()
            # A partial (not a bound method) so that the model still pickles and deep-copies.
            module.forward = functools.partial(_folded_forward, module)
            module.rsparse_fold = True
            linked += 1
    return linked


def _is_ours(forward) -> bool:
    return isinstance(forward, functools.partial) and forward.func is _folded_forward


def set_norm_fusion(model: nn.Module, enabled: bool) -> None:
    """Turn the folded norms and adds on or off in every linked layer (called by `rsparse.fuse.set_fusion`)."""
    for module in model.modules():
        if hasattr(module, "rsparse_fold"):
            module.rsparse_fold = enabled
