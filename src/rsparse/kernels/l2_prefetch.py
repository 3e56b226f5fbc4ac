"""Warm L2 with the next projection's weight while the GPU has little else to read.

In a decoder layer the q/k/v launch is followed by RoPE, the KV-cache writes and attention,
which read a few MB from memory over 10-15 µs (benchmarks/NOTES.md, decode run 12: 14 µs per
layer at batch 1), and only then does o_proj stream its rows, cold. So the programs of the
q/k/v launch, once their own rows are done, ask L2 to fetch o_proj's whole weight
(``prefetch.global.L2``: no register, no wait; the lines arrive while attention runs). o_proj
then reads its active rows from L2 instead of DRAM. Every row is fetched because which rows
o_proj keeps depends on the attention output; the extra bytes are read while memory would idle.

`prefetch_lines` decides on the host whether a tensor is worth it (it must fit well inside L2,
or the lines would evict each other before use); `prefetch_share` is the device helper a launch
calls at the end of each program. Prefetching never changes a result.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["L2_PREFETCH", "MAX_L2_SHARE", "LINE_BYTES", "prefetch_lines", "prefetch_share"]

L2_PREFETCH = True  # False: no launch prefetches (benchmarks compare both)
MAX_L2_SHARE = 0.75  # a target larger than this share of L2 is not prefetched
LINE_BYTES = 128  # one L2 line


@functools.lru_cache(maxsize=None)
def _l2_bytes(device: torch.device) -> int:
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


def prefetch_lines(target: torch.Tensor | None, device: torch.device) -> int:
    """How many 128-byte lines of ``target`` a launch on ``device`` should prefetch (0: none).

    None, a switched-off `L2_PREFETCH`, a CPU launch (the interpreter has no prefetch), a
    target on another device or not contiguous, and a target above `MAX_L2_SHARE` of L2 give 0."""
    if target is None or not L2_PREFETCH or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return 0
    if target.device != device or not target.is_contiguous():
        return 0
    nbytes = target.numel() * target.element_size()
    if nbytes == 0 or nbytes > MAX_L2_SHARE * _l2_bytes(device):
        return 0
    return triton.cdiv(nbytes, LINE_BYTES)


@triton.jit
def prefetch_share(ptr, n_lines, share, shares, LINE: tl.constexpr, BLOCK: tl.constexpr):
    """Ask L2 for lines ``share * ceil(n_lines / shares)`` onwards (this program's share) of the
    tensor at ``ptr``; ``LINE`` is elements per 128-byte line."""
    per = tl.cdiv(n_lines, shares)
    lo = share * per
    hi = tl.minimum(lo + per, n_lines)
    for i in range(lo, hi, BLOCK):
        # The clamped tail asks for the share's last line again: harmless, and no branch.
        line = tl.minimum(i + tl.arange(0, BLOCK), hi - 1).to(tl.int64)
        tl.inline_asm_elementwise(
            "mov.u32 $0, 0;\n\tprefetch.global.L2 [$1];", "=r,l", [ptr + line * LINE],
            dtype=tl.int32, is_pure=False, pack=1,
        )
