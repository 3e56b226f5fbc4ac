"""Tiny models built in-process (no downloads) and shared fixtures."""

from __future__ import annotations

import os

import torch

# Without a GPU the Triton kernels run under the interpreter.  The switch is read when
# `triton.language` is first imported, so it must be set here, before any test module
# (test_cli, test_decode, ...) imports rsparse's kernels; setting it later in one test
# file leaves the kernels half-compiled ("Cannot call @triton.jit'd outside of a kernel").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

VOCAB = 128


def tiny_config(family: str, layers: int = 2):
    """A 2-layer config of the given family with small hidden sizes (GQA where the family has it)."""
    import transformers as tf

    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if family == "llama2":
        return tf.LlamaConfig(**{**common, "num_key_value_heads": 4})
    if family == "llama3":
        return tf.LlamaConfig(**common, rope_theta=500000.0)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=16)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=16, sliding_window=16)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=16)
    if family == "phi3":
        return tf.Phi3Config(**common)
    raise ValueError(family)


FAMILIES = ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]


def tiny_model(family: str = "llama3", seed: int = 0, dtype=torch.float32, layers: int = 2):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers), dtype=dtype)
    return model.eval()


def random_tokens(n: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def calib() -> torch.Tensor:
    return random_tokens(32, 64, seed=1)


@pytest.fixture
def heldout() -> torch.Tensor:
    return random_tokens(32, 64, seed=2)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run only every N-th collected test, starting at I (0-based), so that N processes can share "
                          "one GPU machine's cores (the GPU suite compiles many Triton kernels on the host)")


def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if shard is None:
        return
    try:
        index, count = (int(v) for v in shard.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--shard expects I/N with integers, got {shard!r}") from None
    if not 0 <= index < count:
        raise pytest.UsageError(f"--shard expects 0 <= I < N, got {shard!r}")
    config.hook.pytest_deselected(items=[item for i, item in enumerate(items) if i % count != index])
    items[:] = items[index::count]
