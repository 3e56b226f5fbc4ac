"""Low-rank factors stored in 4 bits (``factor_bits=4``), so the same bytes buy four times the rank.

On SmolLM2-135M a bf16 low-rank path loses to plain channels at equal bytes: the weights' spectra are
flat, and the ranks a bf16 budget buys recover little of what the dropped channels carried. Stored in
4 bits, the factors cost a quarter as much, and the search's ranks get large enough to pay
(benchmarks/NOTES.md, "Twenty-ninth session"): at target 0.5 the searched model's strict held-out
perplexity fell from 38.93 to 35.10 (dense 29.08).

Format, per layer of rank ``r`` (``n`` inputs, ``m`` outputs):

* ``lowrank_in`` ``V`` ``[n, r]`` -> uint8 ``[ceil(n / 2), r]``: input channels ``2i`` (low nibble) and
  ``2i + 1`` (high nibble) share a byte, so a kernel that reads the rows of inactive channels reads
  whole bytes along the reduction;
* ``lowrank_out`` ``[r, m]`` -> uint8 ``[ceil(r / 2), m]``: ranks ``2i`` and ``2i + 1`` share a byte;
* ``lowrank_quant`` fp32 ``[4, r]``: the offset and step of ``V``'s column ``i`` (rows 0, 1) and of
  ``lowrank_out``'s row ``i`` (rows 2, 3). A value is ``offset + step * q``, ``q`` in ``0..15``: one
  min/max range per rank component, because components differ in size by orders of magnitude.
  Per-component ranges also keep the leading ``r' < r`` components exact slices of the
  quantized factors, which the budget search relies on.
"""

from __future__ import annotations

import torch

from rsparse.config import FACTOR_BITS  # 16 (the weight's dtype, as R-Sparse) or 4 (this module)

_LEVELS = 15


def factor_bytes(bits: int) -> float:
    """Bytes of one factor value relative to a 16-bit weight value (the budgets' unit, DESIGN.md §2)."""
    if bits not in FACTOR_BITS:
        raise ValueError(f"factor_bits must be one of {FACTOR_BITS}, got {bits!r}")
    return bits / 16


def _ranges(a: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Offset and step of a min/max 4-bit grid along ``dim`` (fp32; a constant row gets step 1)."""
    lo, hi = a.amin(dim), a.amax(dim)
    step = (hi - lo) / _LEVELS
    return lo, torch.where(step > 0, step, torch.ones_like(step))


def _pack_rows(q: torch.Tensor) -> torch.Tensor:
    """``[2k(+1), c]`` integers in ``0..15`` -> uint8 ``[k(+1), c]``: row ``2i`` low nibble, ``2i + 1`` high."""
    if q.shape[0] % 2:
        q = torch.cat([q, q.new_zeros(1, q.shape[1])])
    return (q[0::2] | (q[1::2] << 4)).to(torch.uint8)


def _unpack_rows(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of `_pack_rows`: ``[rows, c]`` fp32 levels ``0..15``."""
    p = packed.to(torch.int32)
    return torch.stack([p & 15, p >> 4], dim=1).reshape(2 * packed.shape[0], packed.shape[1])[:rows].float()


def quantize_factors(
    lowrank_in: torch.Tensor, lowrank_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack ``lowrank_in`` ``[n, r]`` and ``lowrank_out`` ``[r, m]`` into the 4-bit format above.

    Returns:
        ``(packed_in [ceil(n/2), r] uint8, packed_out [ceil(r/2), m] uint8, quant [4, r] fp32)``.

    Example:

    ```python
    >>> a, b = torch.randn(6, 3), torch.randn(3, 5)
    >>> pin, pout, quant = quantize_factors(a, b)
    >>> pin.shape, pout.shape, quant.shape
    (torch.Size([3, 3]), torch.Size([2, 5]), torch.Size([4, 3]))
    ```
    """
    n, r = lowrank_in.shape
    if lowrank_out.shape[0] != r:
        raise ValueError(f"lowrank_out must have {r} rows to match lowrank_in [{n}, {r}], got {tuple(lowrank_out.shape)}")
    v, u = lowrank_in.detach().float(), lowrank_out.detach().float()
    lo_in, step_in = _ranges(v, 0) if n else (v.new_zeros(r), v.new_ones(r))
    lo_out, step_out = _ranges(u, 1) if u.shape[1] else (u.new_zeros(r), u.new_ones(r))
    q_in = ((v - lo_in) / step_in).round().clamp(0, _LEVELS).to(torch.int32)
    q_out = ((u - lo_out[:, None]) / step_out[:, None]).round().clamp(0, _LEVELS).to(torch.int32)
    quant = torch.stack([lo_in, step_in, lo_out, step_out])
    return _pack_rows(q_in), _pack_rows(q_out), quant


def dequantize_factors(
    packed_in: torch.Tensor, packed_out: torch.Tensor, quant: torch.Tensor, in_features: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors ``[n, r]`` and ``[r, m]`` in ``dtype`` that `quantize_factors` stored.

    Each value ``offset + step * q`` is formed in fp32 (in fp64 for ``dtype=torch.float64``, where it
    is exact), then rounded to ``dtype``: the ops' definition of a packed low-rank path
    (`rsparse.ops.sparse_linear`'s ``lowrank_quant``)."""
    r = quant.shape[1]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    q = quant.to(compute)
    v = q[0] + q[1] * _unpack_rows(packed_in, in_features).to(compute)
    u = q[2, :, None] + q[3, :, None] * _unpack_rows(packed_out, r).to(compute)
    return v.to(dtype), u.to(dtype)


def fake_quantize_factors(lowrank_in: torch.Tensor, lowrank_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors as a 4-bit layer will hold them (quantized, then dequantized), in their dtype."""
    packed_in, packed_out, quant = quantize_factors(lowrank_in, lowrank_out)
    return dequantize_factors(packed_in, packed_out, quant, lowrank_in.shape[0], lowrank_in.dtype)
