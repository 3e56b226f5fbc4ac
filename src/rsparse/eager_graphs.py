"""Eager decode calls on CUDA replayed from captured CUDA graphs.

Eager decoding is bound by host time, and a sparse call used to cost much more of it than a
cuBLAS call: about 106 µs per `RSparseLinear` call on an H200's host against 22 µs for
``F.linear`` (the launch's Python host code plus Triton's launcher reading about 80 arguments;
benchmarks/NOTES.md, decode run 9), so eager ``generate`` ran at 0.4-0.5x of dense. The
kernels are graph-safe by design (DESIGN.md §4: no host synchronisation, no data-dependent
allocation), so the second time a layer (or a fused group) is called eagerly on CUDA with the
same shapes, its launches are captured into a CUDA graph. Later calls copy their inputs into
the graph's static buffers, replay it and clone its outputs: three cheap host operations,
whatever the launch's own host code costs.

What keeps a replay correct:

* The key of a graph holds the inputs' shapes, dtypes and device, and the data pointers of
  every tensor the launch reads (weights, ``c``, ``tau``, factors, bias): a re-assigned or moved
  tensor gives a new key (values are read at replay, so in-place edits are seen). The kernels'
  workspace is persistent and never freed (`rsparse.kernels.compact_gemv`), so the pointer a
  graph recorded stays valid.
* `invalidate` (called by `rsparse.set_backend` and by the kernels' `set_config`) retires every
  graph captured before: they are not replayed again.
* A graph replays only on the stream it was captured for; calls from another stream, and calls
  inside someone else's capture (``torch.cuda.graph``), run uncaptured.
* Every graph's outputs and scratch come from one memory pool per device, so a graph's scratch may
  overlap another graph's outputs: one lock orders copy, replay and clone across all graphs, and
  the outputs are cloned before any other graph replays.
* Outputs are cloned, so a caller may keep them across calls.
* A call that cannot be captured runs uncaptured from then on (logged once).

A gated SiLU MLP is one such call for its two launches (`rsparse.fuse_silu`), kept beside its
down_proj.

Cost: per layer and token count (at most `MAX_TOKENS` tokens, `MAX_GRAPHS` keys per layer),
the graph and its static input and output buffers, a few hundred KB per decoder layer of an
8B model at batch 1. The graphs live beside the module (a weak-keyed table, not module state:
models still deep-copy, pickle and save as before). ``set_enabled(False)`` turns this off.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["set_enabled", "is_enabled", "invalidate", "call", "clear"]

logger = logging.getLogger(__name__)

#: Calls with more tokens than this run uncaptured (decode steps carry a few).
MAX_TOKENS = 8
#: Keys kept per module; a module seeing more (changing batch sizes) starts over.
MAX_GRAPHS = 4

_enabled = True
_generation = 0
_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
# Per device: [pool handle, graphs alive in it]. The allocator frees a pool once the last graph
# using it is gone, and a capture that names a freed pool fails an internal assertion (and leaves
# the allocator recording to it), so a device whose graphs are all gone gets a new handle.
_POOLS: dict[int, list] = {}
_warned = False
_SEEN = object()  # a key seen once: the next call captures it
_FAILED = object()  # a key that could not be captured: always uncaptured
_LOCK = threading.Lock()  # copy, replay and clone of one graph, before any other graph replays


def set_enabled(enabled: bool) -> None:
    """Turn the replay of eager decode calls from CUDA graphs on (the default) or off.

    Example:

    ```python
    >>> rsparse.eager_graphs.set_enabled(False)  # doctest: +SKIP
    ```
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    _enabled = enabled
    if not enabled:
        invalidate()


def is_enabled() -> bool:
    """Whether eager decode calls are replayed from CUDA graphs."""
    return _enabled


def invalidate() -> None:
    """Never replay a graph captured before this call (the launches it recorded may differ now)."""
    global _generation
    _generation += 1
    _GRAPHS.clear()


def clear(module: nn.Module) -> None:
    """Drop the graphs of ``module`` (its tensors moved: `RSparseLinear._apply`)."""
    _GRAPHS.pop(module, None)


class CapturedCall:
    """One captured launch sequence: static inputs, the graph, its outputs."""

    def __init__(self, fn: Callable, inputs: Sequence[torch.Tensor]) -> None:
        device = inputs[0].device
        self.inputs = static_copies(inputs)
        caller = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        pool = _POOLS.get(device.index)
        if pool is None or pool[1] == 0:
            pool = _POOLS[device.index] = [torch.cuda.graph_pool_handle(), 0]
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(side):
                fn(*self.inputs)  # compiles whatever these buffers specialise to, outside the capture
                self.graph.capture_begin(pool=pool[0], capture_error_mode="thread_local")
                try:
                    out = fn(*self.inputs)
                finally:
                    self.graph.capture_end()
        except Exception:
            _POOLS.pop(device.index, None)  # never capture into a pool a failed capture touched
            raise
        finally:
            caller.wait_stream(side)
        pool[1] += 1
        self._pool = pool
        self.many = isinstance(out, (list, tuple))
        self.outputs = list(out) if self.many else [out]
        self.stream = _stream_id(device.index)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool[1] -= 1

    def replay(self, inputs: Sequence[torch.Tensor]):
        with _LOCK:
            for static, t in zip(self.inputs, inputs):
                static.copy_(t)
            self.graph.replay()
            outs = [o.clone() for o in self.outputs]
        return outs if self.many else outs[0]


def static_copies(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Contiguous copies of ``inputs`` that later calls may overwrite in place, in or out of
    ``torch.inference_mode`` (an inference tensor cannot be written outside it, so these never are one)."""
    with torch.inference_mode(False):
        return [t.contiguous().clone() for t in inputs]


def call(owner: nn.Module, tag: str, fn: Callable, inputs: Sequence[torch.Tensor],
         state: Sequence[torch.Tensor | None]):
    """``fn(*inputs)``, replayed from a CUDA graph when it is safe and has been seen before.

    Args:
        owner: the module whose graphs these are (a layer, or a fused group's first layer).
        tag: which launch ``fn`` is (part of the key).
        fn: runs the launch on CUDA tensors; returns a tensor or a list of tensors.
        inputs: the call's activations (first: ``[T, n]``).
        state: every other tensor the launch reads (their data pointers are part of the key).
    """
    global _warned
    x = inputs[0]
    if not _enabled or x.shape[0] > MAX_TOKENS or not _capturable(x):
        return fn(*inputs)
    index = x.get_device()
    key = (tag, _generation, index, *[(t.shape, t.dtype) for t in inputs],
           *[0 if s is None else s.data_ptr() for s in state])
    graphs = _GRAPHS.get(owner)
    if graphs is None:
        graphs = _GRAPHS[owner] = {}
    entry = graphs.get(key)
    if entry is None:  # first sighting: run uncaptured (this also compiles the kernels)
        if len(graphs) >= MAX_GRAPHS:
            graphs.clear()
        graphs[key] = _SEEN
        return fn(*inputs)
    if entry is _SEEN:
        try:
            entry = CapturedCall(fn, inputs)
        except Exception as err:  # noqa: BLE001 - any failure: this call runs uncaptured from now on
            (logger.debug if _warned else logger.warning)(
                "rsparse: an eager decode call of %s (%s) could not be captured in a CUDA graph and runs "
                "uncaptured (further failures are logged at debug level): %s", type(owner).__name__, tag, err)
            _warned = True
            entry = _FAILED
        graphs[key] = entry
    if entry is _FAILED or entry.stream != _stream_id(index):
        return fn(*inputs)
    return entry.replay(inputs)


def _capturable(x: torch.Tensor) -> bool:
    # Not inside someone else's capture: a capture cannot begin (or replay) within another.
    return x.is_cuda and not torch.cuda.is_current_stream_capturing()


# The raw stream handle, as inductor reads it: much cheaper than a `torch.cuda.Stream` object.
_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream_id(index: int) -> int:
    if _RAW_STREAM is not None:
        return _RAW_STREAM(index)
    return torch.cuda.current_stream(index).cuda_stream
