"""Decode speed of a causal LM, the way transformers decodes fast: dense prefill, then one
token per step through a static KV cache, optionally with the step compiled.

`decode_speed` times the decode steps only (prefill excluded) with the same harness for a
dense and a sparsified model, so that their ratio is the speed-up a user of ``generate``
with ``cache_implementation="static"`` and a compiled forward can expect.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

import torch
from torch import nn

import rsparse.ops.decode_attention  # noqa: F401  (registers rsparse::decode_attention for split_key_attention)

__all__ = ["decode_speed", "decode_tokens", "decode_logits", "compile_decode_step", "use_packed_attention",
           "register_packed_attention", "packed_sdpa_attention", "split_key_attention", "register_split_key_attention",
           "use_split_key_attention"]

# transformers' names for `packed_sdpa_attention` and `split_key_attention` once registered.
PACKED_SDPA = "rsparse_packed_sdpa"
SPLIT_KEY = "rsparse_split_key"
#: `split_key_attention` takes ``rsparse::decode_attention`` only where its host cost vanishes: in a step
#: traced by ``torch.compile`` or captured into a CUDA graph, unless this is set.  In eager decoding the
#: custom-op dispatch, the argument checks and a Triton launch of 30 arguments cost more host time than
#: the few microseconds per layer the kernel saves on the GPU (decode run 47, H200, eager, batch 1:
#: dense 32.8 ms/token with SDPA, 43.8 with the op in every layer), so eager calls get the packed SDPA.
SPLIT_KEY_IN_EAGER = False


def compile_decode_step(
    model: nn.Module,
    *,
    fullgraph: bool = True,
    backend: str = "inductor",
    mode: str | None = None,
    skip_module_guards: bool = False,
):
    """``torch.compile`` the model's forward for decode steps, as ``generate`` does with a static cache.

    Args:
        model (`nn.Module`): the causal LM.
        fullgraph (`bool`, defaults to `True`): fail on a graph break instead of splitting the graph.
        backend (`str`, defaults to ``"inductor"``): the compile backend (``"eager"`` or ``"aot_eager"``
            trace without generating code, for tests on machines without a compiler).
        mode (`str`, *optional*): compile mode; defaults to ``"reduce-overhead"`` (CUDA graphs) for a
            model on CUDA with the inductor backend, the default mode otherwise.
        skip_module_guards (`bool`, defaults to `False`): compile with PyTorch's
            ``torch.compiler.skip_guard_on_all_nn_modules_unsafe`` guard filter: no guards on the
            modules' attributes and tensors, so each step skips their checks (a sparsified model has
            about four times the dense model's tensors, and their checks are most of its host time
            per step: benchmarks/NOTES.md, run 23). Unsafe as PyTorch names it: a model changed after
            compiling (``set_mode``, new thresholds, other weights) is not noticed; compile again.

    Returns:
        The compiled callable (the model itself is not modified).

    Example:

    ```python
    >>> step = compile_decode_step(model)  # doctest: +SKIP
    >>> # call step(...) as model(...) for each single-token decode step on a static cache
    ```
    """
    if not isinstance(skip_module_guards, bool):
        raise ValueError(f"skip_module_guards must be a bool, got {skip_module_guards!r}")
    if mode is None and backend == "inductor" and _device(model).type == "cuda":
        mode = "reduce-overhead"
    if not skip_module_guards:
        return torch.compile(model, fullgraph=fullgraph, backend=backend, mode=mode)
    # torch.compile takes a guard filter only among its options, and options exclude a mode:
    # inductor's options for the mode stand in for it.
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    if backend == "inductor":
        from torch._inductor import list_mode_options

        options.update(list_mode_options(mode or "default"))
    elif mode is not None:
        raise ValueError(f"skip_module_guards with backend {backend!r} takes no mode, got mode={mode!r}")
    return torch.compile(model, fullgraph=fullgraph, backend=backend, options=options)


@torch.no_grad()
def decode_tokens(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    *,
    step: Any = None,
    cache: Any = None,
) -> torch.Tensor:
    """Greedy decoding with a static KV cache: prefill by ``model`` (dense in mode ``"auto"`` when the
    prompt is longer than the layers' ``decode_cutoff``, sparse otherwise), then ``new_tokens - 1``
    single-token steps by ``step`` (``model`` itself, or `compile_decode_step(model)`).

    Args:
        model (`nn.Module`): the causal LM (runs the prefill).
        prompt (`torch.LongTensor`): ``[batch, prompt_len]`` token ids on the model's device.
        new_tokens (`int`): tokens to generate (the first comes from the prefill).
        step (*optional*): the callable for decode steps; defaults to ``model``.
        cache (*optional*): a `transformers.StaticCache` to reuse (it is reset first); by default
            one of ``prompt_len + new_tokens`` positions is made.

    Returns:
        `torch.LongTensor` ``[batch, new_tokens]``: the generated ids.

    Example:

    ```python
    >>> ids = decode_tokens(model, prompt, 64, step=compile_decode_step(model))  # doctest: +SKIP
    ```
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    if cache is None:
        cache = _static_cache(model, prompt.shape[1] + new_tokens)
    run = _Decoder(model, model if step is None else step, cache)
    tok = run.prefill(prompt)
    out = [tok]
    for _ in range(new_tokens - 1):
        tok = run.step(tok)
        out.append(tok)
    return torch.cat(out, dim=1)


@torch.no_grad()
def decode_logits(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    *,
    step: Any = None,
    forced: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`decode_tokens` that also keeps every call's logits, optionally teacher-forced: with ``forced``
    ``[batch, >= new_tokens - 1]``, decode step ``i`` is fed ``forced[:, i]`` instead of the previous
    greedy choice, so that two models (backends, fusions, compiled and eager) are compared on the
    same inputs at every step rather than only up to their first different choice.

    Returns:
        The greedy choices ``[batch, new_tokens]`` and the fp32 logits of the last position of the
        prefill and of every step ``[batch, new_tokens, vocab]``.

    Example:

    ```python
    >>> toks, ref = decode_logits(model, prompt, 32)  # doctest: +SKIP
    >>> _, other = decode_logits(model, prompt, 32, step=compile_decode_step(model), forced=toks)  # doctest: +SKIP
    >>> (other - ref).norm(dim=-1) / ref.norm(dim=-1)  # per-step difference on the same inputs  # doctest: +SKIP
    ```
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    if forced is not None and forced.shape[1] < new_tokens - 1:
        raise ValueError(f"forced needs at least new_tokens - 1 = {new_tokens - 1} columns, got {forced.shape[1]}")
    run = _LogitsDecoder(model, model if step is None else step, _static_cache(model, prompt.shape[1] + new_tokens))
    out = [run.prefill(prompt)]
    for i in range(new_tokens - 1):
        out.append(run.step(out[-1] if forced is None else forced[:, i : i + 1]))
    return torch.cat(out, dim=1), torch.stack(run.logits, dim=1)


@torch.no_grad()
def decode_speed(
    model: nn.Module,
    *,
    batch_size: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 256,
    compile: bool | str = False,
    repeats: int = 3,
    seed: int = 0,
    skip_module_guards: bool = False,
) -> dict[str, Any]:
    """Median time per decoded token of greedy decoding with a static KV cache.

    A random prompt (``seed``) of ``batch_size × prompt_len`` tokens is prefilled by the eager
    model (dense, as in ``generate``); then ``new_tokens - 1`` single-token steps run, each
    through ``model`` or, with ``compile=True``, through `compile_decode_step` (``torch.compile``,
    full graph; CUDA graphs on a GPU). Only the decode steps are timed (CUDA events on a GPU, a
    host clock on the CPU). One untimed warm-up run precedes the ``repeats`` timed ones, so that
    compilation and CUDA-graph recording stay out of the numbers; the cache is reused and
    reset between runs so the compiled step sees the same tensors every time.

    Args:
        model (`nn.Module`): a causal LM (dense or sparsified), in eval mode, on its device.
        batch_size (`int`, defaults to 1): sequences decoded together.
        prompt_len (`int`, defaults to 128): prompt tokens per sequence.
        new_tokens (`int`, defaults to 256): tokens generated per sequence (at least 2).
        compile (`bool` or `str`, defaults to `False`): compile the decode step; `True` uses inductor
            (with CUDA graphs on a GPU), a string names another ``torch.compile`` backend (e.g.
            ``"aot_eager"``, which traces the same graph without generating code).
        repeats (`int`, defaults to 3): timed runs; the median is reported.
        seed (`int`, defaults to 0): seed of the random prompt.
        skip_module_guards (`bool`, defaults to `False`): passed to `compile_decode_step` (compiled steps only).

    Returns:
        `dict` with ``ms_per_token`` (median over runs of decode time / decode steps),
        ``tokens_per_s`` (``batch_size`` sequences × 1000 / ``ms_per_token``), ``ms_per_token_runs``
        (every run), ``peak_memory_mb`` (GPU: the most memory allocated during the decode steps,
        model and cache included; CPU: None), ``model_memory_mb`` (parameters and buffers),
        ``graphs_compiled`` and ``graph_breaks`` (torch.compile counters over the whole call;
        None when not compiling), ``device``, ``dtype`` and the settings.

    Example:

    ```python
    >>> r = decode_speed(model, batch_size=1, prompt_len=128, new_tokens=256, compile=True)  # doctest: +SKIP
    >>> r["ms_per_token"], r["peak_memory_mb"]  # doctest: +SKIP
    ```
    """
    for name, value, low in (("batch_size", batch_size, 1), ("prompt_len", prompt_len, 1),
                             ("new_tokens", new_tokens, 2), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
    device = _device(model)
    cuda = device.type == "cuda"
    vocab = model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=torch.Generator().manual_seed(seed))
    prompt = prompt.to(device)
    steps = new_tokens - 1

    if compile:
        from torch._dynamo.utils import counters

        # Earlier compilations of this model class (another model, batch size or target) would
        # count against dynamo's recompile limit and could send this one back to eager.
        torch._dynamo.reset()
        counters.clear()
        step = compile_decode_step(model, backend="inductor" if compile is True else compile,
                                   skip_module_guards=skip_module_guards)
    else:
        step = model
    run = _Decoder(model, step, _static_cache(model, prompt_len + new_tokens))

    def one_run(n_steps: int, measure: bool) -> tuple[float, float | None]:
        tok = run.prefill(prompt)
        peak = None
        if cuda:
            torch.cuda.synchronize(device)
            if measure:
                torch.cuda.reset_peak_memory_stats(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        for _ in range(n_steps):
            tok = run.step(tok)
        if cuda:
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            ms = (time.perf_counter() - t0) * 1e3
        return ms / n_steps, peak

    one_run(min(steps, 8), measure=False)  # warm-up: compile, CUDA-graph recording, autotuning
    times, peaks = [], []
    for _ in range(repeats):
        ms, peak = one_run(steps, measure=True)
        times.append(ms)
        peaks.append(peak)

    graphs = breaks = None
    if compile:
        graphs = int(counters["stats"]["unique_graphs"])
        breaks = int(sum(counters["graph_break"].values()))
    ms_per_token = statistics.median(times)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {
        "ms_per_token": ms_per_token,
        "tokens_per_s": batch_size * 1e3 / ms_per_token,
        "ms_per_token_runs": times,
        "peak_memory_mb": max(peaks) if cuda else None,
        "model_memory_mb": model_bytes / 2**20,
        "graphs_compiled": graphs,
        "graph_breaks": breaks,
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "decode_steps": steps,
        "compile": ("inductor" if compile is True else compile) if compile else False,
        "skip_module_guards": bool(compile) and skip_module_guards,
        "repeats": repeats,
        "seed": seed,
        "device": torch.cuda.get_device_name(device) if cuda else device.type,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


class _Decoder:
    """Prefill and single-token steps on one static cache, with the keyword names of the installed
    transformers (``cache`` since 5.2x, ``past_key_values`` before; ``cache_position`` where the
    forward still takes it). Positions live in a device tensor advanced in place: no host sync."""

    def __init__(self, model: nn.Module, step: Any, cache: Any) -> None:
        self.model, self.step_fn, self.cache = model, step, cache
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.pass_cache_position = "cache_position" in params
        self.keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self.pos: torch.Tensor | None = None

    def _call(self, fn, ids: torch.Tensor, positions: torch.Tensor, **extra) -> torch.Tensor:
        kw = {self.cache_kw: self.cache, "use_cache": True, "position_ids": positions.unsqueeze(0), **extra}
        if self.pass_cache_position:
            kw["cache_position"] = positions
        logits = fn(ids, **kw).logits
        return logits[:, -1:].argmax(-1)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        self.cache.reset()
        n = prompt.shape[1]
        extra = {self.keep_kw: 1} if self.keep_kw else {}
        tok = self._call(self.model, prompt, torch.arange(n, device=prompt.device), **extra)
        self.pos = torch.full((1,), n, dtype=torch.long, device=prompt.device)
        return tok

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        tok = self._call(self.step_fn, tok, self.pos)
        self.pos.add_(1)
        return tok


class _LogitsDecoder(_Decoder):
    """`_Decoder` that keeps the fp32 logits of each call's last position (`decode_logits`)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.logits: list[torch.Tensor] = []

    def _call(self, fn, ids: torch.Tensor, positions: torch.Tensor, **extra) -> torch.Tensor:
        kw = {self.cache_kw: self.cache, "use_cache": True, "position_ids": positions.unsqueeze(0), **extra}
        if self.pass_cache_position:
            kw["cache_position"] = positions
        logits = fn(ids, **kw).logits[:, -1].float()
        self.logits.append(logits.clone())  # a CUDA-graph step reuses its output buffer
        return logits.argmax(-1, keepdim=True)


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except that one query token of a grouped-query attention attends
    on the key/value heads themselves: the query heads of a group are packed as that key/value head's
    queries (``[B, H, 1, D] -> [B, H_kv, H / H_kv, D]``, a view). transformers' own SDPA forward copies
    K and V to every query head first (``repeat_kv``: two copies of the whole static cache per layer and
    step) whenever a mask is given under ``torch.compile`` (5.25 packs like this only in eager decode;
    5.17 never does). Each query head still attends on its own group's key/value head, so the outputs
    are the same attention; every other call (prompts, multi-head attention, position biases, masks
    that differ between heads) goes to transformers' own forward.

    Example:

    ```python
    >>> out, _ = packed_sdpa_attention(model.model.layers[0].self_attn, q, k, v, mask, scaling=0.088)  # doctest: +SKIP
    >>> out.shape  # [batch, 1, heads, head_dim], as transformers' attention functions return it  # doctest: +SKIP
    ```
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, d = query.shape
    mask = attention_mask
    per_head_mask = mask is not None and (mask.dim() != 4 or mask.shape[1] != 1)
    if (groups == 1 or q_len != 1 or per_head_mask or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # mask [B, 1, 1, L] broadcasts over the packed [B, H_kv, groups, L] scores
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, heads // groups, groups, d), key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    # [B, H_kv, groups, D] is [B, H, D] in memory (query head h = kv head * groups + g): transformers' layout [B, 1, H, D]
    return out.reshape(b, 1, heads, d), None


def split_key_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`packed_sdpa_attention` with a decode token's attention computed by ``rsparse::decode_attention``:
    the keys split into ranges over many programs (a Triton kernel on CUDA), where SDPA's kernels give
    each key/value head one program that walks the whole static cache. Calls it does not take (prompts,
    a non-boolean or per-head mask, soft-capping, attention sinks, head dims other than a power of 2 in
    [16, 256], dropout) go to `packed_sdpa_attention`, and so do eager calls outside a CUDA-graph capture
    unless `SPLIT_KEY_IN_EAGER` is set: there the op's host cost exceeds what it saves.

    Example:

    ```python
    >>> out, _ = split_key_attention(model.model.layers[0].self_attn, q, k, v, mask, scaling=0.088)  # doctest: +SKIP
    ```
    """
    groups = getattr(module, "num_key_value_groups", 1)
    b, heads, q_len, d = query.shape
    mask = attention_mask
    takes = (
        (SPLIT_KEY_IN_EAGER or _traced_or_captured(query.device))
        and q_len == 1 and dropout == 0.0 and query.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and 16 <= d <= 256 and d & (d - 1) == 0 and key.shape[1] * groups == heads
        and (mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1
                              and mask.shape[2] == 1 and mask.shape[3] == key.shape[2]))
        and kwargs.get("position_bias") is None and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
        and not kwargs.get("output_attentions", False)
    )
    if not takes:
        return packed_sdpa_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     **kwargs)
    scale = scaling if scaling is not None else d ** -0.5
    out = torch.ops.rsparse.decode_attention(query.reshape(b, heads // groups, groups, d), key, value, mask, scale)
    return out.reshape(b, 1, heads, d), None  # [B, H_kv, G, D] is [B, H, D] in memory


def _traced_or_captured(device: torch.device) -> bool:
    """Whether this call is traced by ``torch.compile`` or captured into a CUDA graph."""
    return torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def register_packed_attention() -> str:
    """Register `packed_sdpa_attention` with transformers (with SDPA's masks) and return its name, for
    ``from_pretrained(..., attn_implementation=name)`` or ``model.set_attn_implementation(name)``.

    Example:

    ```python
    >>> name = register_packed_attention()
    >>> name
    'rsparse_packed_sdpa'
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)  # doctest: +SKIP
    ```
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA


def use_packed_attention(model: nn.Module) -> None:
    """Give a transformers model `packed_sdpa_attention` (a model whose family has no SDPA attention
    gets transformers' ``ValueError``).

    A harness setting, not part of R-Sparse: benchmarks that compare a dense and a sparsified model give
    it to both (`benchmarks/decode.py --attn sdpa-packed`).

    Example:

    ```python
    >>> for m in (dense, sparse):  # doctest: +SKIP
    ...     use_packed_attention(m)
    >>> decode_speed(dense, compile=True)["ms_per_token"] / decode_speed(sparse, compile=True)["ms_per_token"]  # doctest: +SKIP
    ```
    """
    model.set_attn_implementation(register_packed_attention())


def _static_cache(model: nn.Module, max_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def register_split_key_attention() -> str:
    """Register `split_key_attention` with transformers (with SDPA's boolean masks) and return its name.

    Example:

    ```python
    >>> register_split_key_attention()
    'rsparse_split_key'
    ```
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SPLIT_KEY, split_key_attention)
    AttentionMaskInterface.register(SPLIT_KEY, sdpa_mask)
    return SPLIT_KEY


def use_split_key_attention(model: nn.Module) -> None:
    """Give a transformers model `split_key_attention`. A harness setting, not part of R-Sparse: benchmarks
    that compare a dense and a sparsified model give it to both (`benchmarks/decode.py --attn split-key`).

    Example:

    ```python
    >>> for m in (dense, sparse):  # doctest: +SKIP
    ...     use_split_key_attention(m)
    ```
    """
    model.set_attn_implementation(register_split_key_attention())
