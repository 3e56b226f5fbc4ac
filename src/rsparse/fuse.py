"""One fused launch per decode step for the linears that read the same input (q/k/v, gate/up).

Hugging Face attention and MLP modules call ``q_proj``, ``k_proj`` and ``v_proj`` (and
``gate_proj``, ``up_proj``) one after the other on the same tensor, and their forward code
differs across families and transformers versions. Rather than patching it, the
`RSparseLinear` modules of such a group are linked to a `SharedInputGroup`: when its first
member is called on ``x``, it computes every member's output with one
``rsparse::sparse_linear_multi`` call (one kernel launch on the Triton backend), returns its
own and keeps the others together with ``x``; a member then called with the very same tensor
object takes its kept output. Any other call (another tensor, a member called twice, an
unexpected order) runs the member on its own, so results never depend on the call order.

Nothing outlives a round: the last member to take its output clears the group, and any call
that is not part of the round clears it first. The kept outputs are the tensors the separate
calls would have made (only made a little earlier), so fusing adds no memory. The group is
plain Python state, never in the state dict; `sparsify` records the groups' names in
``RSparseConfig.groups`` and loading links them again. Under ``torch.compile`` the round
happens inside the traced graph: dynamo follows the attribute writes, and the group is empty
again when the graph ends, so its guards hold on the next step (no recompilation).
"""

from __future__ import annotations

import torch
from torch import nn

from rsparse.fuse_norm import set_norm_fusion
from rsparse.fuse_silu import set_silu_fusion
from rsparse.nn import RSparseLinear, fused_forward, rsparse_modules

__all__ = ["SharedInputGroup", "link_groups", "linked_groups", "set_fusion"]


class SharedInputGroup:
    """`RSparseLinear` modules that read the same input, served by one fused launch.

    Args:
        members (`list[RSparseLinear]`): at least two layers with the same ``in_features``, in the
            order the model calls them (the first one starts the fused launch).

    Example:

    ```python
    >>> group = SharedInputGroup([attn.q_proj, attn.k_proj, attn.v_proj])  # doctest: +SKIP
    >>> q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)  # one launch, same outputs
    ```
    """

    def __init__(self, members: list[RSparseLinear]) -> None:
        if len(members) < 2 or not all(isinstance(m, RSparseLinear) for m in members):
            raise ValueError(
                f"a shared-input group needs at least 2 RSparseLinear, got {[type(m).__name__ for m in members]}"
            )
        if len({m.in_features for m in members}) != 1:
            raise ValueError(
                f"members of a shared-input group must share in_features, got {[m.in_features for m in members]}"
            )
        self.members = list(members)
        self.enabled = True
        # (weight, eps) of the RMSNorm that the next round's input needs (`rsparse.fuse_norm`): the
        # folded decoder layer sets it just before calling attention on its residual stream.
        self.pending_norm: tuple[torch.Tensor, float] | None = None
        for slot, m in enumerate(self.members):
            m.shared_input, m.shared_slot = self, slot
        self.clear()

    def clear(self) -> None:
        """Drop the kept outputs and the reference to their input."""
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor | None] = []  # per slot: kept for a later call, or None
        self._fused: list[bool] = []  # per slot: computed by the round's launch
        self._version: int | None = None
        self._grad = False

    def __call__(self, member: RSparseLinear, x: torch.Tensor) -> torch.Tensor:
        slot = member.shared_slot
        # Read the round once: `clear` swaps in new lists, so a round that another thread ends
        # meanwhile leaves these intact (and this call still correct).
        kept, outputs, fused_slots = self._input, self._outputs, self._fused
        if x is kept and self._unchanged(x):
            y = outputs[slot]
            if y is not None:
                outputs[slot] = None
                if all(o is None for o in outputs):
                    self.clear()
                return y
            if not fused_slots[slot]:  # a member outside the launch (dense dispatch): the round goes on
                return member.forward_alone(x)
        self.clear()  # a call outside the round ends it: nothing kept may go stale
        norm, self.pending_norm = self.pending_norm, None
        fused = (
            [m for m in self.members if m.takes_kernel(x) and m._parameters["weight_t"].device == x.device] if self.enabled else []
        )
        if norm is not None and (fused != self.members or slot != 0):
            # The folded layer checked that the whole group takes one launch from its first member.
            raise RuntimeError("a folded RMSNorm reached a shared-input round that is not one launch of the whole group")
        # Only the first member that takes the kernel starts a round, so a member called alone
        # (k_proj without q_proj) computes nothing for the others. The device check leaves
        # offloaded members (weights on "meta" until their own hook loads them) to their own call.
        if len(fused) < 2 or fused[0].shared_slot != slot:
            return member.forward_alone(x)
        ys = fused_forward(x, fused, norm)
        self._outputs = [None] * len(self.members)
        self._fused = [False] * len(self.members)
        for m, y in zip(fused, ys):
            self._fused[m.shared_slot] = True
            if m.shared_slot != slot:
                self._outputs[m.shared_slot] = y
        self._input, self._version, self._grad = x, _version(x), torch.is_grad_enabled()
        return ys[0]

    def _unchanged(self, x: torch.Tensor) -> bool:
        # In eager mode an in-place edit of x after the fused call bumps its version counter;
        # dynamo cannot read the counter, but the traced graph orders the edits anyway.
        return self._grad == torch.is_grad_enabled() and self._version == _version(x)


def _version(x: torch.Tensor) -> int | None:
    if torch.compiler.is_compiling() or x.is_inference():  # inference tensors have no counter
        return None
    return x._version


def link_groups(model: nn.Module, groups: list[list[str]]) -> list[SharedInputGroup]:
    """Link the `RSparseLinear` modules named in each group (replacing any earlier links).

    Args:
        model: the sparsified model.
        groups: qualified names of layers that read the same input, each group in call order
            (``RSparseConfig.groups``); groups of one layer are ignored.

    Returns:
        The groups created.
    """
    modules = rsparse_modules(model)
    for m in modules.values():
        m.shared_input, m.shared_slot = None, 0
    linked = []
    for names in groups:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"shared-input group {names} names {missing}, which are not RSparseLinear layers of the model"
            )
        if len(names) >= 2:
            linked.append(SharedInputGroup([modules[n] for n in names]))
    return linked


def linked_groups(model: nn.Module) -> list[list[str]]:
    """The qualified names of every linked group in ``model``, in module order (for the config)."""
    modules = rsparse_modules(model)
    names = {id(m): name for name, m in modules.items()}
    seen, groups = set(), []
    for m in modules.values():
        group = m.shared_input
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            groups.append([names[id(member)] for member in group.members])
    return groups


def set_fusion(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn the fused launches on (the default) or off; outputs stay the same.

    Covers the shared-input groups (q/k/v, gate/up: one launch each), the gated MLPs whose
    ``F.silu(gate) * up`` is formed inside the down projection's launch (`rsparse.fuse_silu`) and
    the decoder layers whose norms and residual adds are folded into the launches (`rsparse.fuse_norm`).

    Args:
        model: a sparsified model.
        enabled: ``False`` runs every layer on its own (one launch per layer).

    Returns:
        The model.

    Example:

    ```python
    >>> rsparse.fuse.set_fusion(model, False)  # doctest: +SKIP
    ```
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    set_silu_fusion(model, enabled)
    set_norm_fusion(model, enabled)
    for m in rsparse_modules(model).values():
        if m.shared_input is not None:
            m.shared_input.enabled = enabled
            m.shared_input.clear()
    return model
