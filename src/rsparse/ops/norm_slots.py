"""Slots where a launch leaves the sum of squares of the row it wrote, for the next launch's RMSNorm.

A folded decoder layer (`rsparse.fuse_norm`) hands its residual stream ``h`` to the q/k/v and
gate/up launches, whose programs each form ``rsqrt(mean(h²) + eps)`` by loading the whole row
before they can build their mask: on an H200 that costs the q/k/v launch about 1.4 µs and the
compaction launch 0.5 µs per layer (decode run 29's profile). But ``h`` was just written by
one of our launches (o_proj's or down_proj's, which add the residual): each of its output tiles
adds the squares of the values it stored to a slot, and the last tile of the launch moves the
total to the slot's value word. The launch that reads ``h`` next then loads one float.

The slots live in one persistent fp32 buffer per device (outside any CUDA graph's pool), four
words each: the running sum, a tile counter (int32 bits), the value, a spare. Every producing
launch leaves the running sum and the counter at zero, so no launch clears them. Slot numbers are
handed out once per linked decoder layer (`claim`) and fixed for the process: a captured graph
keeps pointing at the same words. The reference ops fill the value with PyTorch when handed a
slot, so that a producer always leaves it right whichever implementation ran.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["SLOTS", "claim", "buffer", "slot_views", "record", "recorded", "value"]

SLOTS = 1024  # 512 decoder layers at two slots each; later claims get -1 (no slot: the norm is formed as before)
WORDS = 4

_lock = threading.Lock()
_next = 0
_BUFFERS: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}
_VIEWS: dict[tuple[str, int | None, int], tuple[torch.Tensor, torch.Tensor]] = {}


def claim(count: int) -> list[int]:
    """``count`` fresh slot numbers (``-1`` for each beyond `SLOTS`)."""
    global _next
    with _lock:
        first, _next = _next, _next + count
    return [s if s < SLOTS else -1 for s in range(first, first + count)]


def buffer(device: torch.device, create: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The device's slot buffer as fp32 and int32 views of the same ``SLOTS * WORDS`` zeroed words.

    Created on first use outside a CUDA graph capture (``create``); ``None`` where it does not exist
    yet and cannot be made now. A launch handed a slot while the buffer is missing does without it
    (producers write nothing, consumers form the norm as before), so both sides agree."""
    key = (device.type, device.index)
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
    _BUFFERS[key] = (flat, flat.view(torch.int32))
    return _BUFFERS[key]


def slot_views(device: torch.device, slot: int, create: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(fp32 words from the slot's running sum on, int32 words from its counter on)``, or ``None``
    for ``slot < 0`` or a missing buffer (see `buffer`). Cut once per slot: views cost host time."""
    if slot < 0:
        return None
    if not 0 <= slot < SLOTS:
        raise ValueError(f"norm slot must be in [0, {SLOTS}), got {slot}")
    key = (device.type, device.index, slot)
    hit = _VIEWS.get(key)
    if hit is not None:
        return hit
    buf = buffer(device, create)
    if buf is None:
        return None
    flat, ints = buf
    _VIEWS[key] = (flat[slot * WORDS :], ints[slot * WORDS + 1 :])
    return _VIEWS[key]


def recorded(y: torch.Tensor, slot: int) -> torch.Tensor:
    """``y`` after `record` of a one-token output (``[1, m]``) into ``slot``; other shapes and
    ``slot < 0`` leave the slots alone (only one-token launches read them)."""
    if slot >= 0 and y.dim() == 2 and y.shape[0] == 1:
        record(y, slot)
    return y


def record(y: torch.Tensor, slot: int) -> None:
    """Leave the sum of squares of ``y`` (as stored, in fp32) in ``slot``'s value word, with PyTorch:
    what a producing launch does in its tiles, for the paths that run no such launch."""
    views = slot_views(y.device, slot)
    if views is not None:
        views[0][2:3].copy_(y.float().square().sum().reshape(1))


def value(device: torch.device, slot: int) -> float | None:
    """The value word of ``slot`` (a host read, for tests and debugging)."""
    views = slot_views(device, slot, create=False)
    return None if views is None else float(views[0][2])
