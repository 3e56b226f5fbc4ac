"""Which implementation runs ``rsparse::sparse_linear``: the PyTorch reference or Triton.

``"auto"`` (the default) runs the Triton kernels on CUDA tensors when Triton is installed
and the reference everywhere else; ``"torch"`` always runs the reference; ``"triton"``
always runs Triton, also on CPU tensors when ``TRITON_INTERPRET=1`` (for CI).  The
kernels module is imported on first use only, so ``import rsparse`` needs no Triton.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from rsparse import eager_graphs
from rsparse.ops import fused, silu_mul
from rsparse.ops.reference import check_fold_args, sparse_linear_reference

__all__ = ["BACKENDS", "set_backend", "get_backend"]

BACKENDS = ("auto", "torch", "triton")
# Above this many tokens a call is compute-bound: the dense masked matmul of the
# reference beats a GEMV that streams the weight once per block of 8 tokens.
MAX_TRITON_TOKENS = 32

_backend = "auto"


# Looked up once: the default "auto" backend asks on every decode call, a module search takes microseconds, and
# `RSparseLinear.takes_kernel` asks inside torch.compile's tracing, which warns on functools caches.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _triton_installed() -> bool:
    return _TRITON_FOUND


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_backend(backend: str) -> None:
    """Choose the implementation of the sparse decode path.

    Args:
        backend (`str`): ``"auto"`` (Triton on CUDA tensors when installed, PyTorch
            otherwise), ``"torch"`` (always the PyTorch reference) or ``"triton"`` (always
            Triton; CPU tensors need ``TRITON_INTERPRET=1``).

    Raises:
        ValueError: for an unknown name, or ``"triton"`` where Triton cannot run.

    Example:

    ```python
    >>> rsparse.set_backend("torch")  # doctest: +SKIP
    ```
    """
    global _backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "triton":
        if not _triton_installed():
            raise ValueError("backend 'triton' needs the triton package (pip install triton); it is not installed")
        if not (torch.cuda.is_available() or _interpreting()):
            raise ValueError("backend 'triton' needs a CUDA GPU or TRITON_INTERPRET=1; found neither")
    _backend = backend
    eager_graphs.invalidate()  # graphs captured so far recorded the other backend's launches


def get_backend() -> str:
    """The backend chosen by `set_backend` (``"auto"`` by default)."""
    return _backend


def _use_triton(x: torch.Tensor) -> bool:
    if _backend == "torch" or x.shape[0] > MAX_TRITON_TOKENS:
        return False
    if x.device.type == "cuda":
        return _backend == "triton" or _triton_installed()
    if _backend == "triton":
        if not _interpreting():
            raise ValueError(
                f"backend 'triton' cannot run on {x.device.type} tensors without TRITON_INTERPRET=1; "
                "call rsparse.set_backend('auto') or move the model to a CUDA device"
            )
        return True
    return False


def triton_runs(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` would run the Triton kernels (decided from shapes and settings only); False, not an
    error, where forcing ``"triton"`` cannot serve ``x``."""
    try:
        return _use_triton(x)
    except ValueError:
        return False


def _sparse_linear(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0, residual=None,
                   lowrank_quant=None):
    check_fold_args(x, None, residual, weight_t.shape[1])
    if _use_triton(x):
        from rsparse.kernels import sparse_linear as kernels

        return kernels.sparse_linear(
            x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=active_fraction, residual=residual,
            lowrank_quant=lowrank_quant,
        )
    return sparse_linear_reference(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, residual, lowrank_quant)


def _sparse_linear_multi(x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0,
                         norm_weight=None, norm_eps=0.0, lowrank_quant=None):
    check_fold_args(x, norm_weight, None, None)
    if _use_triton(x):
        from rsparse.kernels import sparse_linear as kernels

        return kernels.sparse_linear_multi(
            x, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=active_fraction,
            norm_weight=norm_weight, norm_eps=norm_eps, lowrank_quant=lowrank_quant,
        )
    return fused.sparse_linear_multi_reference(
        x, weight_t, c, tau, lowrank_in, lowrank_out, bias, norm_weight, norm_eps, lowrank_quant
    )


def _sparse_linear_silu_mul(gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=1.0,
                            residual=None, lowrank_quant=None):
    check_fold_args(gate, None, residual, weight_t.shape[1])
    if _use_triton(gate):
        from rsparse.kernels import sparse_linear as kernels

        return kernels.sparse_linear_silu_mul(
            gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, active_fraction=active_fraction,
            residual=residual, lowrank_quant=lowrank_quant,
        )
    return silu_mul.sparse_linear_silu_mul_reference(
        gate, up, weight_t, c, tau, lowrank_in, lowrank_out, bias, residual, lowrank_quant
    )


# The implementations the ops dispatch to on CPU and CUDA, for callers that skip the dispatcher
# (`rsparse.nn` in eager mode on CUDA tensors: see `rsparse.nn.direct_call`).
run_sparse_linear = _sparse_linear
run_sparse_linear_multi = _sparse_linear_multi
run_sparse_linear_silu_mul = _sparse_linear_silu_mul


def register(sparse_linear_op) -> None:
    for device in ("cuda", "cpu"):
        sparse_linear_op.register_kernel(device)(_sparse_linear)
        fused.sparse_linear_multi.register_kernel(device)(_sparse_linear_multi)
        silu_mul.sparse_linear_silu_mul.register_kernel(device)(_sparse_linear_silu_mul)
