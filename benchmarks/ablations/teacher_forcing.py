"""Greedy decoding that also returns every step's logits, optionally teacher-forced (shared by the
rounding ablations: ``rounding_sensitivity.py``, ``compiled_vs_eager_teacher_forced.py``,
``backend_divergence.py``)."""
import torch

from rsparse import bench


@torch.no_grad()
def greedy_logits(model, prompt: torch.Tensor, steps: int, *, step=None, forced: torch.Tensor | None = None):
    """Decode ``steps`` tokens with a static cache as `rsparse.bench.decode_tokens` does (prefill by
    ``model``, single-token steps by ``step`` or ``model``); with ``forced`` ``[1, steps]``, step ``i``
    is fed ``forced[:, i]`` instead of the previous greedy choice. Returns the greedy tokens
    ``[1, steps]`` and the last position's fp32 logits of every call ``[steps, vocab]``."""
    dec = bench._Decoder(model, model if step is None else step, bench._static_cache(model, prompt.shape[1] + steps))
    logits = []

    def call(fn, ids, positions, **extra):
        kw = {dec.cache_kw: dec.cache, "use_cache": True, "position_ids": positions.unsqueeze(0), **extra}
        if dec.pass_cache_position:
            kw["cache_position"] = positions
        out = fn(ids, **kw).logits[:, -1].float()
        logits.append(out.clone())  # a compiled step may reuse its output buffer
        return out.argmax(-1, keepdim=True)

    dec._call = call
    toks = [dec.prefill(prompt)]
    for i in range(steps - 1):
        toks.append(dec.step(toks[-1] if forced is None else forced[:, i : i + 1]))
    return torch.cat(toks, 1), torch.cat(logits)
