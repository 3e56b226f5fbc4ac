"""Greedy decoding that also returns every step's logits, optionally teacher-forced (shared by the
rounding ablations: ``rounding_sensitivity.py``, ``compiled_vs_eager_teacher_forced.py``,
``backend_divergence.py``); a batch-1 view of `rsparse.bench.decode_logits`."""
import torch

from rsparse import bench


def greedy_logits(model, prompt: torch.Tensor, steps: int, *, step=None, forced: torch.Tensor | None = None):
    """Decode ``steps`` tokens with a static cache as `rsparse.bench.decode_tokens` does (prefill by
    ``model``, single-token steps by ``step`` or ``model``); with ``forced`` ``[1, steps]``, step ``i``
    is fed ``forced[:, i]`` instead of the previous greedy choice. Returns the greedy tokens
    ``[1, steps]`` and the last position's fp32 logits of every call ``[steps, vocab]``."""
    toks, logits = bench.decode_logits(model, prompt, steps, step=step, forced=forced)
    return toks, logits.transpose(0, 1).reshape(-1, logits.shape[-1])
