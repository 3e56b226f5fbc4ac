"""`RSparseLinear`, the module that replaces `nn.Linear`, and module surgery helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import rsparse.ops  # noqa: F401  (registers torch.ops.rsparse.sparse_linear)
from rsparse import eager_graphs
from rsparse.config import MODES, LayerBudget
from rsparse.factor_quant import dequantize_factors, factor_bytes, quantize_factors
from rsparse.ops import backend
from rsparse.ops.reference import rms_norm_reference


class RSparseLinear(nn.Module):
    """A linear layer that, for decode tokens, reads only the weight rows of its active input channels
    and replaces the rest with a rank-``r`` correction (R-Sparse, DESIGN.md §1 and §4).

    State (all persistent, state-dict names equal attribute names):

    * ``weight_t`` ``[in, out]``: the transposed weight, the only copy of it. Row ``j`` holds
      every weight that multiplies input channel ``j``, so skipping a channel skips one
      contiguous row. `weight` is a view of it in the usual ``[out, in]`` layout.
    * ``c`` ``[in]`` fp32: channel weights of the score ``|x_j| * c_j`` (column norms of the
      weight for the ``"rsparse"`` rule, ones for ``"magnitude"``).
    * ``tau`` 0-dim fp32: channels scoring above it are active.
    * ``lowrank_in`` ``[in, r]`` and ``lowrank_out`` ``[r, out]``: the low-rank path
      ``V_r`` and ``(U_r S_r)ᵀ`` applied to the inactive channels. With ``factor_bits=4`` they are
      packed uint8 ``[ceil(in/2), r]`` and ``[ceil(r/2), out]`` with ``lowrank_quant`` fp32 ``[4, r]``
      (`rsparse.factor_quant`), and every sparse call dequantizes them first.
    * ``bias`` ``[out]`` or None.

    Args:
        in_features (`int`): input channels.
        out_features (`int`): output channels.
        rank (`int`, defaults to 0): rank of the low-rank path.
        bias (`bool`, defaults to `False`): whether the layer has a bias.
        mode (`str`, defaults to ``"auto"``): ``"auto"`` (sparse when a call carries at most
            ``decode_cutoff`` tokens, dense otherwise), ``"sparse"`` or ``"dense"``.
        decode_cutoff (`int`, defaults to 8): see ``mode``.
        factor_bits (`int`, defaults to 16): bits per stored factor value, 16 (``dtype``) or 4.
        dtype, device: of the weight, factors and bias.

    Example:

    ```python
    >>> lin = torch.nn.Linear(64, 32)
    >>> sparse = RSparseLinear.from_linear(lin, tau=-1.0)  # tau < 0 keeps every channel
    >>> x = torch.randn(1, 64)
    >>> torch.allclose(sparse(x), lin(x), atol=1e-5)
    True
    ```
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int = 0,
        bias: bool = False,
        *,
        mode: str = "auto",
        decode_cutoff: int = 8,
        factor_bits: int = 16,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        factor_bytes(factor_bits)  # validates
        self.in_features = in_features
        self.out_features = out_features
        kw = {"dtype": dtype, "device": device}
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features, **kw), requires_grad=False)
        self.register_buffer("c", torch.ones(in_features, dtype=torch.float32, device=device))
        self.register_buffer("tau", torch.full((), -1.0, dtype=torch.float32, device=device))
        self.factor_bits = factor_bits
        if factor_bits == 16:
            self.register_buffer("lowrank_in", torch.zeros(in_features, rank, **kw))
            self.register_buffer("lowrank_out", torch.zeros(rank, out_features, **kw))
        else:
            packed = {"dtype": torch.uint8, "device": device}
            self.register_buffer("lowrank_in", torch.zeros((in_features + 1) // 2, rank, **packed))
            self.register_buffer("lowrank_out", torch.zeros((rank + 1) // 2, out_features, **packed))
            self.register_buffer("lowrank_quant", torch.zeros(4, rank, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, **kw), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.budget: LayerBudget | None = None
        self.decode_cutoff = decode_cutoff
        # The `rsparse.fuse.SharedInputGroup` this layer belongs to (q/k/v, gate/up), and its
        # place in it; set by `rsparse.fuse.link_groups`. A plain attribute, not state.
        self.shared_input = None
        self.shared_slot = 0
        # A `rsparse.fuse_norm.FoldSlot` where a folded decoder layer leaves the residual that this
        # layer's next call adds to its output (o_proj); set by `rsparse.fuse_norm.link_norm_layers`.
        self.fold_slot = None
        self.set_mode(mode)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        tau: torch.Tensor | float,
        c: torch.Tensor | None = None,
        lowrank_in: torch.Tensor | None = None,
        lowrank_out: torch.Tensor | None = None,
        budget: LayerBudget | None = None,
        mode: str = "auto",
        decode_cutoff: int = 8,
        factor_bits: int = 16,
    ) -> "RSparseLinear":
        """Build from an `nn.Linear`, copying its weight into the transposed layout.

        Args:
            linear: the layer to replace (its bias tensor is shared, not copied).
            tau: threshold on ``|x| * c``.
            c: channel weights (fp32, ``[in]``); defaults to the weight's column norms.
            lowrank_in, lowrank_out: low-rank factors ``[in, r]`` and ``[r, out]``; none for rank 0.
            budget: the `LayerBudget` this layer was built for (shown by `rsparse.summary`).
            factor_bits: 16 keeps the factors in the weight's dtype; 4 packs them (`rsparse.factor_quant`).
        """
        w = linear.weight.detach()
        rank = 0 if lowrank_in is None else lowrank_in.shape[1]
        new = cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            mode=mode,
            decode_cutoff=decode_cutoff,
            factor_bits=factor_bits,
            dtype=w.dtype,
            device=w.device,
        )
        new.weight_t.data = w.t().contiguous()
        new.c.copy_(column_norms(w) if c is None else c)
        new.tau.fill_(float(tau))
        if rank and factor_bits == 16:
            new.lowrank_in.copy_(lowrank_in)
            new.lowrank_out.copy_(lowrank_out)
        elif rank:
            for name, t in zip(("lowrank_in", "lowrank_out", "lowrank_quant"), quantize_factors(lowrank_in, lowrank_out)):
                getattr(new, name).copy_(t)
        if linear.bias is not None:  # shares the storage; inference needs no gradient
            new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        new.budget = budget
        return new

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``[out, in]`` (a transposed view of ``weight_t``, not a copy)."""
        return self.weight_t.t()

    @property
    def rank(self) -> int:
        return self._buffers["lowrank_in"].shape[1]  # (no `__getattr__`: read on every decode call)

    def set_mode(self, mode: str) -> None:
        """Choose the path: ``"auto"``, ``"sparse"`` or ``"dense"`` (see the class docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        if self.shared_input is not None:  # outputs kept for a member were made in the old mode
            self.shared_input.clear()

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` takes the sparse path (decided from shapes only)."""
        if self.mode == "auto":
            return x.numel() // self.in_features <= self.decode_cutoff
        return self.mode == "sparse"

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def keeps_every_channel(self) -> bool:
        """Whether the budget keeps every input channel with no low-rank path (static info): the sparse
        op would then read the whole weight, as the dense GEMM does."""
        return self.budget is not None and self.budget.k >= self.in_features and self.rank == 0

    def takes_kernel(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` runs ``rsparse::sparse_linear`` (decided from shapes and settings only).

        A layer that keeps every channel takes it on the Triton kernels for one token, and for batches only as a member
        of an enabled shared-input group (`rsparse.fuse`, whose launch then serves the whole group); otherwise the dense
        GEMM serves it (the reference would compute the same product more slowly, and batches read the whole weight
        either way). One token at full density, the Triton launch was within 1 % of the dense GEMM on this layout, or
        faster, on every Llama-3-8B case timed: kernel run 49 (H200) gate/up 33.45 against 33.25 us, down 33.51 / 33.55,
        gate+up fused 59.14 / 62.48, q/k/v fused + o 29.81 / 42.43; kernel run 62 (H100) 44.65 / 47.09, 43.23 / 44.06,
        81.32 / 90.91, 36.49 / 42.65. It also joins the launches of the layers sharing its input, and the folds of
        rsparse.fuse_norm and rsparse.fuse_silu: decode run 45 (H200, target 0, batch 1) ran 1.16x faster with every
        layer on the kernel than with the dense GEMM. At batch 4 down_proj was 4-5 % slower on the kernel on both cards,
        gate/up 9 % on the H200 (benchmarks/NOTES.md, thirty-eighth session), but the fused launches of the groups were
        faster than their members' GEMMs: batch 4, 0 %, us, kernel / GEMM, q/k/v fused (+ o on the kernel alone) 33.40 /
        42.31 on the H200 (run 49), 42.35 / 45.88, 41.67 / 45.14 and 40.89 / 45.69 on the H100 (runs 62, 69, 70);
        gate+up fused 61.34 / 61.78 (H200), 87.10 / 93.49, 87.10 / 92.90 and 85.12 / 85.97 (H100). The group rule was
        drawn from those rows (forty-second session); a member left alone in its round (its siblings offloaded) then
        takes the kernel by itself."""
        if not self.uses_sparse_path(x):
            return False
        if not self.keeps_every_channel():
            return True
        if x.numel() // self.in_features > 1 and (self.shared_input is None or not self.shared_input.enabled):
            return False
        return backend.triton_runs(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input is not None:  # may answer from one fused launch for the whole group
            return self.shared_input(self, x)
        slot = self.fold_slot
        if slot is not None and slot.residual is not None:  # a folded decoder layer's o_proj (rsparse.fuse_norm)
            residual, slot.residual = slot.residual, None
            return self.forward_alone(x, residual)
        return self.forward_alone(x)

    def forward_alone(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's output computed on its own (no fused launch with the layers sharing its input),
        plus ``residual`` (same shape as the output) if given, added inside the op's launch."""
        if not self.takes_kernel(x):
            y = self.forward_dense(x)
            return y if residual is None else residual + y
        x2 = x.reshape(-1, self.in_features)
        if direct_call(x):
            y = eager_graphs.call(self, "linear", self._run_direct, (x2,), self._state_tensors())
            y = y.view(*x.shape[:-1], self.out_features)
            return y if residual is None else residual + y
        r2 = None if residual is None else residual.reshape(-1, self.out_features)
        y = torch.ops.rsparse.sparse_linear(
            x2, *self._op_tensors(), self.expected_active_fraction(), r2, self.factor_ranges()
        )
        return y.view(*x.shape[:-1], self.out_features)

    def _run_direct(self, x: torch.Tensor) -> torch.Tensor:
        return backend.run_sparse_linear(
            x, *self._op_tensors(), self.expected_active_fraction(), lowrank_quant=self.factor_ranges()
        )

    def forward_silu_mul(self, gate: torch.Tensor, up: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``self(F.silu(gate) * up)``: a gated MLP's down projection (see `rsparse.fuse_silu`), plus
        ``residual`` if given (a decoder layer's residual add, `rsparse.fuse_norm`).

        Where the call takes the sparse kernel, it is one ``rsparse::sparse_linear_silu_mul``
        call, which the one-token Triton launch serves without a launch of its own for the
        product (or the add); otherwise the product is formed first and the layer called on it.
        """
        if gate.shape != up.shape or gate.shape[-1] != self.in_features:
            raise ValueError(
                f"gate and up must both be [..., {self.in_features}], got {tuple(gate.shape)} and {tuple(up.shape)}"
            )
        if self.shared_input is not None or not self.takes_kernel(gate):
            y = self(F.silu(gate) * up)
            return y if residual is None else residual + y
        n = self.in_features
        gate2, up2 = gate.reshape(-1, n), up.reshape(-1, n)
        if direct_call(gate):
            y = eager_graphs.call(self, "silu_mul", self._run_direct_silu_mul, (gate2, up2), self._state_tensors())
            y = y.view(*gate.shape[:-1], self.out_features)
            return y if residual is None else residual + y
        r2 = None if residual is None else residual.reshape(-1, self.out_features)
        y = torch.ops.rsparse.sparse_linear_silu_mul(
            gate2, up2, *self._op_tensors(), self.expected_active_fraction(), r2, self.factor_ranges()
        )
        return y.view(*gate.shape[:-1], self.out_features)

    def _run_direct_silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return backend.run_sparse_linear_silu_mul(
            gate, up, *self._op_tensors(), self.expected_active_fraction(), lowrank_quant=self.factor_ranges()
        )

    def _op_tensors(self) -> tuple:
        """The layer's tensors in the order the ``rsparse::sparse_linear*`` ops take them (packed
        factors as stored: the ops read them with `lowrank_quant`)."""
        # Read from the registries directly: `nn.Module.__getattr__` costs host time on every
        # eager decode call (six lookups per call), and eager decoding is bound by host time.
        p, b = self._parameters, self._buffers
        return p["weight_t"], b["c"], b["tau"], b["lowrank_in"], b["lowrank_out"], p["bias"]

    def factor_ranges(self) -> torch.Tensor | None:
        """The ranges ``[4, r]`` of packed 4-bit factors (the ops' ``lowrank_quant``); ``None`` at 16 bits."""
        return self._buffers.get("lowrank_quant")

    def _state_tensors(self) -> tuple:
        """The stored tensors the sparse call reads (what a captured graph's key must hold)."""
        return (*self._op_tensors(), self.factor_ranges())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The low-rank factors ``[in, r]`` and ``[r, out]`` in the weight's dtype (dequantized if packed)."""
        b = self._buffers
        if self.factor_bits == 16:
            return b["lowrank_in"], b["lowrank_out"]
        return dequantize_factors(b["lowrank_in"], b["lowrank_out"], b["lowrank_quant"], self.in_features, self.weight_t.dtype)

    def expected_active_fraction(self) -> float:
        """The budget's ``k / n`` (1.0 without a budget): a hint for the kernel's launch choice."""
        if self.budget is None:
            return 1.0
        return min(1.0, self.budget.k / self.in_features)

    def _apply(self, fn, recurse=True):
        # `model.to(dtype)` / `.half()` cast every floating buffer; the score inputs must
        # stay fp32 so that the mask does not depend on the model dtype.
        super()._apply(fn, recurse)
        eager_graphs.clear(self)  # their pointers are stale now (new keys would miss them anyway)
        for name in ("c", "tau", "lowrank_quant"):
            if name in self._buffers and self._buffers[name].dtype != torch.float32:
                self._buffers[name] = self._buffers[name].float()
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            + (f"factor_bits={self.factor_bits}, " if self.factor_bits != 16 else "")
            + f"bias={self.bias is not None}, mode={self.mode!r}"
        )


def forward_shared_input(x: torch.Tensor, modules: "list[RSparseLinear] | tuple[RSparseLinear, ...]") -> list[torch.Tensor]:
    """Run several `RSparseLinear` that read the same input (q/k/v, gate/up) in one launch.

    Gives the same outputs as ``[m(x) for m in modules]``; when every module takes the sparse
    path, they are computed by one ``rsparse::sparse_linear_multi`` call (one fused kernel
    launch on the Triton backend) reading each module's own tensors.

    Args:
        x (`torch.Tensor`): input ``[..., in_features]`` shared by the modules.
        modules (`list[RSparseLinear]`): layers with the same ``in_features``.

    Returns:
        `list[torch.Tensor]`: one output ``[..., out_features]`` per module.

    Example:

    ```python
    >>> q, k, v = forward_shared_input(h, [attn.q_proj, attn.k_proj, attn.v_proj])  # doctest: +SKIP
    ```
    """
    if len({m.in_features for m in modules}) != 1:
        raise ValueError(f"modules must share in_features, got {[m.in_features for m in modules]}")
    if len(modules) < 2 or not all(m.takes_kernel(x) for m in modules):
        return [m.forward_alone(x) for m in modules]
    return fused_forward(x, modules)


def multi_args(modules: "list[RSparseLinear]") -> tuple[tuple, float, list | None]:
    """The per-module tensor lists, the launch hint and the ``lowrank_quant`` list (``None`` when no
    module packs its factors) that ``rsparse::sparse_linear_multi`` takes."""
    per_module = [m._op_tensors() for m in modules]
    tensors = tuple(list(column) for column in zip(*per_module))
    quant = [m.factor_ranges() for m in modules]
    return tensors, max(m.expected_active_fraction() for m in modules), None if all(q is None for q in quant) else quant


def fused_forward(
    x: torch.Tensor, modules: "list[RSparseLinear]", norm: "tuple[torch.Tensor, float] | None" = None
) -> list[torch.Tensor]:
    """One ``rsparse::sparse_linear_multi`` call for ``modules`` (all taking the kernel on ``x``).

    ``norm`` (``(weight, eps)`` of a Llama RMSNorm): ``x`` is the residual stream and the modules
    read its norm, formed inside the launch where it can be (`rsparse.fuse_norm`)."""
    x2 = x.reshape(-1, modules[0].in_features)
    if not direct_call(x):
        tensors, fraction, quant = multi_args(modules)
        norm_weight, norm_eps = norm or (None, 0.0)
        ys = torch.ops.rsparse.sparse_linear_multi(x2, *tensors, fraction, norm_weight, norm_eps, quant)
        return [y.view(*x.shape[:-1], m.out_features) for y, m in zip(ys, modules)]
    if norm is not None:
        x2 = rms_norm_reference(x2, *norm)  # eager CUDA calls replay the plain launch's graph
    tensors, fraction, quant = multi_args(modules)

    def run(x2: torch.Tensor) -> list[torch.Tensor]:
        return backend.run_sparse_linear_multi(x2, *tensors, fraction, lowrank_quant=quant)

    state = [t for m in modules for t in m._state_tensors()]
    ys = eager_graphs.call(modules[0], f"multi{len(modules)}", run, (x2,), state)
    return [y.view(*x.shape[:-1], m.out_features) for y, m in zip(ys, modules)]


def direct_call(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` runs the op's implementation without going through the dispatcher.

    Eager decoding is bound by host time, and the dispatcher of a Python custom op adds to it:
    12–14 µs per call on an H200's host, on top of 106–167 µs for the call itself
    (benchmarks/NOTES.md, decode runs 7–9). Plain CUDA tensors outside tracing and autograd skip
    it: the same function runs either way. Traced code (``torch.compile``, export) keeps the op.
    """
    return (
        type(x) is torch.Tensor
        and x.is_cuda
        and not torch.compiler.is_compiling()
        and not (x.requires_grad and torch.is_grad_enabled())
    )


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """``||W[:, j]||_2`` for every input channel ``j`` of an ``[out, in]`` weight, in fp32."""
    return torch.linalg.vector_norm(weight.float(), dim=0)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the qualified ``name`` inside ``model``; returns the module it replaced."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child_name)
    setattr(parent, child_name, new)
    return old


def rsparse_modules(model: nn.Module) -> dict[str, RSparseLinear]:
    """Every `RSparseLinear` in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RSparseLinear)}


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set the forward mode of every `RSparseLinear` in ``model``.

    Args:
        model: a model sparsified by `rsparse.sparsify` (or reloaded).
        mode: ``"auto"`` (dense prefill, sparse decode; the default), ``"sparse"`` (every token
            sparse: the strict evaluation protocol) or ``"dense"`` (the original model).

    Returns:
        The model.

    Example:

    ```python
    >>> rsparse.set_mode(model, "sparse")  # doctest: +SKIP
    ```
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    modules = rsparse_modules(model)
    if not modules:
        raise ValueError("the model holds no RSparseLinear; call rsparse.sparsify(model) first")
    for m in modules.values():
        m.set_mode(mode)
    return model


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's stack of layers: the largest `nn.ModuleList` of same-class blocks holding linears.

    Returns:
        ``(qualified_name, module_list)``, e.g. ``("model.layers", ...)`` for Llama.
    """
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(layer) for layer in module}) != 1:
            continue
        if not any(isinstance(m, (nn.Linear, RSparseLinear)) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    if best is None:
        raise ValueError(
            f"found no decoder layers (an nn.ModuleList of blocks holding nn.Linear) in {type(model).__name__}"
        )
    return best
