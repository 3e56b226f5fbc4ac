"""``rsparse::decode_attention``: one decode token's attention with grouped query heads packed
onto their key/value head, as a `torch.library` custom op (opaque to ``torch.compile``, safe in
CUDA graphs).

``decode_attention(q, k, v, mask, scale)`` with ``q`` ``[B, H_kv, G, D]`` (the ``G`` query heads
of each key/value head as its queries), ``k``/``v`` ``[B, H_kv, L, D]`` and a boolean key mask
``[B, 1, 1, L]`` (true: attend) or None returns ``softmax(q kᵀ · scale + mask) v``, ``[B, H_kv, G,
D]``. The reference is PyTorch's SDPA on the same packed view; on CUDA tensors (and on CPU tensors
under ``TRITON_INTERPRET=1`` with ``rsparse.set_backend("triton")``) the split-key Triton kernel of
`rsparse.kernels.decode_attention` runs instead. A harness attention for decode benchmarks
(`rsparse.bench.use_decode_attention`), given to dense and sparse models alike; not part of R-Sparse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["decode_attention", "decode_attention_reference", "check_decode_attention_args"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_decode_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless the shapes and dtypes are ones the op takes (see the module)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-d [B, H_kv, G, D] / [B, H_kv, L, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, _, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"k and v must be [B={b}, H_kv={h}, L, D={d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"head dim must be a power of 2 in [16, 256], got {d}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (true: attend), got {mask.dtype}")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != k.shape[2] \
                or mask.shape[0] not in (1, b):
            raise ValueError(f"mask must be [B or 1, 1, 1, L={k.shape[2]}], got {tuple(mask.shape)}")


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                               scale: float) -> torch.Tensor:
    """PyTorch's SDPA on the packed query (the mask broadcasts over heads and packed queries).

    Example:

    ```python
    >>> out = decode_attention_reference(q, k, v, mask, scale=0.088)  # doctest: +SKIP
    ```
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@torch.library.custom_op("rsparse::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """Packed decode attention (module docstring); ``[B, H_kv, G, D]`` in ``q.dtype``.

    Example:

    ```python
    >>> out = torch.ops.rsparse.decode_attention(q.view(b, h_kv, g, d), k_cache, v_cache, mask, d ** -0.5)  # doctest: +SKIP
    ```
    """
    check_decode_attention_args(q, k, v, mask)
    return decode_attention_reference(q, k, v, mask, scale)


@decode_attention.register_fake
def _(q, k, v, mask, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _decode_attention(q, k, v, mask, scale):
    from rsparse.ops import backend

    check_decode_attention_args(q, k, v, mask)
    on_triton = (q.device.type == "cuda" and backend._triton_installed()) or (
        backend.get_backend() == "triton" and backend._interpreting())
    if not on_triton:
        return decode_attention_reference(q, k, v, mask, scale)
    from rsparse.kernels.decode_attention import decode_attention as kernel

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if mask is not None:
        mask = mask.expand(q.shape[0], 1, 1, k.shape[2])  # a batch of 1 broadcast: stride 0
    return kernel(q, k, v, mask, scale)


for _device in ("cuda", "cpu"):
    decode_attention.register_kernel(_device)(_decode_attention)
