"""Slots where a launch leaves the sum of squares of the row it wrote, for the next launch's RMSNorm.

A folded decoder layer (`rsparse.fuse_norm`) hands its residual stream ``h`` to the q/k/v and
gate/up launches, whose programs each form ``rsqrt(mean(h²) + eps)`` by loading the whole row
before they can build their mask. But ``h`` was just written by one of our launches (o_proj's or
down_proj's, which add the residual): the program that writes an output tile also stores the sum
of the squares of the values it stored in the tile's own word of a slot, and tile 0 stores the
number of tiles in the slot's last word. The launch that reads ``h`` next loads the slot (512
bytes) instead of the row, and adds the words below the count.

The slots live in one persistent fp32 buffer per device (outside any CUDA graph's pool),
`WORDS` words each. Each word has one writer per launch and no reader before the launch ends, so
no atomics and nothing to reset (decode run 33: a first form with a tile counter and a running
sum in the slot cost the producing launches more than the folded norms saved). Slot numbers are
handed out once per linked decoder layer (`claim`) and fixed for the process: a captured graph
keeps pointing at the same words. Where no producing launch runs (the PyTorch reference, a launch
with more tiles than a slot has words), `record` fills the slot with PyTorch, so that a producer
always leaves it right whichever implementation ran.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["SLOTS", "claim", "buffer", "slot_views", "record", "recorded", "value"]

SLOTS = 1024  # 512 decoder layers at two slots each; later claims get -1 (no slot: the norm is formed as before)
WORDS = 128  # per slot: up to WORDS - 1 tiles' partial sums, then the tile count (a power of two: one vector load)

_lock = threading.Lock()
_next = 0
_BUFFERS: dict[tuple[str, int | None], torch.Tensor] = {}
_VIEWS: dict[tuple[str, int | None, int], torch.Tensor] = {}


def claim(count: int) -> list[int]:
    """``count`` fresh slot numbers (``-1`` for each beyond `SLOTS`)."""
    global _next
    with _lock:
        first, _next = _next, _next + count
    return [s if s < SLOTS else -1 for s in range(first, first + count)]


def _key(device: torch.device) -> tuple[str, int | None]:
    if device.type == "cuda" and device.index is None:
        return ("cuda", torch.cuda.current_device())
    return (device.type, device.index)


def buffer(device: torch.device, create: bool = True) -> torch.Tensor | None:
    """The device's slot buffer (``SLOTS * WORDS`` fp32 words, zeroed when made).

    Created on first use outside a CUDA graph capture (``create``); ``None`` where it does not exist
    yet and cannot be made now. A launch handed a slot while the buffer is missing does without it
    (producers write nothing, consumers form the norm from the row), so both sides agree."""
    key = _key(device)
    hit = _BUFFERS.get(key)
    if hit is not None or not create:
        return hit
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if device.type == "cuda":
        from rsparse.kernels.compact_gemv import _zeros_outside_graph_pool

        flat = _zeros_outside_graph_pool(SLOTS * WORDS, device)
    else:
        flat = torch.zeros(SLOTS * WORDS, dtype=torch.float32, device=device)
    _BUFFERS[key] = flat
    return flat


def slot_views(device: torch.device, slot: int, create: bool = True) -> torch.Tensor | None:
    """The ``WORDS`` fp32 words of ``slot``, or ``None`` for ``slot < 0`` or a missing buffer (see
    `buffer`). Cut once per slot: views cost host time."""
    if slot < 0:
        return None
    if not 0 <= slot < SLOTS:
        raise ValueError(f"norm slot must be in [0, {SLOTS}), got {slot}")
    key = (*_key(device), slot)
    hit = _VIEWS.get(key)
    if hit is not None:
        return hit
    flat = buffer(device, create)
    if flat is None:
        return None
    _VIEWS[key] = flat[slot * WORDS : (slot + 1) * WORDS]
    return _VIEWS[key]


def recorded(y: torch.Tensor, slot: int) -> torch.Tensor:
    """``y`` after `record` of a one-token output (``[1, m]``) into ``slot``; other shapes and
    ``slot < 0`` leave the slots alone (only one-token launches read them)."""
    if slot >= 0 and y.dim() == 2 and y.shape[0] == 1:
        record(y, slot)
    return y


def record(y: torch.Tensor, slot: int) -> None:
    """Fill ``slot`` with the sum of squares of ``y`` (as stored, in fp32) with PyTorch, as one tile:
    what a producing launch does in its tiles, for the paths that run no such launch."""
    words = slot_views(y.device, slot)
    if words is not None:
        total = y.float().square().sum().reshape(1)
        words.copy_(torch.cat([total, total.new_zeros(WORDS - 2), total.new_ones(1)]))


def value(device: torch.device, slot: int) -> float | None:
    """The sum of squares ``slot`` holds (a host read, for tests and debugging)."""
    words = slot_views(device, slot, create=False)
    if words is None:
        return None
    count = int(words[-1])
    return float(words[:count].sum())
