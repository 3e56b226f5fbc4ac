"""``rsparse::decode_attention`` and `rsparse.bench.split_key_attention`: the split-key Triton kernel
against PyTorch's SDPA on fresh random inputs (under the interpreter on the CPU, compiled on the GPU),
and the attention in a decoding model (the same logits as SDPA, eager and compiled in one graph)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch._dynamo.utils import counters

import rsparse
from rsparse import bench
from rsparse.bench import decode_logits, use_split_key_attention
from rsparse.ops.decode_attention import (
    check_decode_attention_args,
    decode_attention_reference,
)

from .conftest import random_tokens, tiny_model

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1",
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPT = 8
# Relative error (norm-wise) against fp64 SDPA: fp32 to rounding; fp16/bf16 about one rounding of the
# probabilities and of the output (read 2.4e-4 / 2.4e-3 under the interpreter), with room.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _restore_backend():
    yield
    rsparse.set_backend("auto")


def random_case(b, h, g, n, d, dtype, device="cpu", seed=0, gap=None, broadcast_mask=False):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, rows, d, generator=gen).to(device, dtype) for rows in (g, n, n))
    mask = torch.rand(1 if broadcast_mask else b, 1, 1, n, generator=gen) > 0.3
    if gap is not None:  # whole key blocks with nothing to attend: skipped by the kernel
        mask[..., gap[0]:gap[1]] = False
    mask[..., -1] = True  # every row attends to something (SDPA's output is NaN otherwise)
    return q, k, v, mask.to(device)


def relative_error(out, q, k, v, mask, scale):
    ref = decode_attention_reference(q.double(), k.double(), v.double(), mask, scale)
    return ((out.double() - ref).norm() / ref.norm()).item()


CASES = [  # batch, key/value heads, packed queries, keys, head dim
    (1, 2, 4, 200, 32),  # Llama-3's 4 query heads per key/value head
    (3, 2, 1, 65, 16),  # multi-head attention, keys one past a block
    (2, 1, 7, 130, 64),  # an odd group
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_sdpa_under_the_interpreter(case, dtype):
    b, h, g, n, d = case
    q, k, v, mask = random_case(b, h, g, n, d, dtype, seed=sum(case), gap=(64, 128))
    rsparse.set_backend("triton")
    out = torch.ops.rsparse.decode_attention(q, k, v, mask, d ** -0.5)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert relative_error(out, q, k, v, mask, d ** -0.5) < TOLERANCE[dtype]


@needs_triton
def test_kernel_without_mask_and_with_a_broadcast_mask():
    q, k, v, mask = random_case(2, 2, 4, 150, 32, torch.float32, seed=4, broadcast_mask=True)
    rsparse.set_backend("triton")
    for m in (None, mask):
        out = torch.ops.rsparse.decode_attention(q, k, v, m, 0.3)
        assert relative_error(out, q, k, v, m, 0.3) < 1e-5


@needs_triton
def test_kernel_takes_strided_inputs_and_returns_a_contiguous_output():
    """q with its heads and queries transposed, K/V a slice of a longer cache: the strides are read, and the
    output is contiguous, as the op's fake declares for torch.compile."""
    q, k, v, mask = random_case(2, 3, 4, 100, 32, torch.float32, seed=5)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, H_kv, G, D] view of a [B, G, H_kv, D] buffer
    k_long, v_long = torch.randn(2, 3, 150, 32), torch.randn(2, 3, 150, 32)
    k_long[:, :, :100], v_long[:, :, :100] = k, v
    rsparse.set_backend("triton")
    out = torch.ops.rsparse.decode_attention(q, k_long[:, :, :100], v_long[:, :, :100], mask, 0.2)
    assert not q.is_contiguous() and out.is_contiguous()
    assert relative_error(out, q, k, v, mask, 0.2) < 1e-5


@needs_triton
def test_counters_are_zero_after_calls_of_other_shapes():
    """The per-head counters live in a buffer that is zero at rest: calls of growing and shrinking batch and
    length in a row (the scratch regions move) still merge exactly their own ranges."""
    from rsparse.kernels import decode_attention as kernel

    rsparse.set_backend("triton")
    for seed, (b, n) in enumerate([(1, 300), (4, 70), (2, 200), (4, 300)]):
        q, k, v, mask = random_case(b, 2, 4, n, 16, torch.float32, seed=seed)
        out = torch.ops.rsparse.decode_attention(q, k, v, mask, 0.25)
        assert relative_error(out, q, k, v, mask, 0.25) < 1e-5
        assert not kernel._COUNTERS[("cpu", None)].view(torch.int32).any()


def test_split_plan_covers_every_key_with_non_empty_ranges():
    from rsparse.kernels.decode_attention import BLOCK_N, split_plan

    for b, h, n, sms in [(1, 8, 384, 132), (4, 8, 2304, 132), (1, 8, 1, 132), (64, 8, 384, 132), (1, 1, 10000, 4)]:
        splits, per = split_plan(b, h, n, sms)
        blocks = -(-n // BLOCK_N)
        assert splits * per >= blocks > (splits - 1) * per  # covered, and the last range has a block
        assert 1 <= splits <= 64


def test_reference_path_on_cpu_and_bad_arguments():
    q, k, v, mask = random_case(1, 2, 4, 40, 16, torch.float32)
    rsparse.set_backend("torch")
    out = torch.ops.rsparse.decode_attention(q, k, v, mask, 0.25)
    torch.testing.assert_close(out, decode_attention_reference(q, k, v, mask, 0.25), rtol=0, atol=0)
    with pytest.raises(ValueError, match="boolean"):
        check_decode_attention_args(q, k, v, mask.float())
    with pytest.raises(ValueError, match="power of 2"):
        check_decode_attention_args(q[..., :12], k[..., :12], v[..., :12], mask)
    with pytest.raises(ValueError, match="L=40"):
        check_decode_attention_args(q, k, v, mask[..., :39])
    with pytest.raises(ValueError, match="share one dtype"):
        check_decode_attention_args(q, k.half(), v, mask)


@needs_triton
@pytest.mark.parametrize("family", ["llama3", "qwen3", "llama2"])
def test_split_key_attention_decodes_as_sdpa(family, monkeypatch):
    """A tiny model with `use_split_key_attention` (the Triton kernel under the interpreter): the logits of
    SDPA on the same tokens, eager (with `SPLIT_KEY_IN_EAGER`; without it eager calls never reach the
    kernel) and compiled (one graph, the op in it); multi-head attention too."""
    prompt = random_tokens(2, PROMPT, seed=6)
    model = tiny_model(family)
    tokens, ref = decode_logits(model, prompt, 5)
    use_split_key_attention(model)
    rsparse.set_backend("triton")
    calls = []
    from rsparse.kernels import decode_attention as kernel

    original = kernel.decode_attention
    monkeypatch.setattr(kernel, "decode_attention", lambda *a: calls.append(a[0].shape) or original(*a))
    _, eager_default = decode_logits(model, prompt, 5, forced=tokens)
    assert not calls  # eager calls take the packed SDPA
    torch.testing.assert_close(eager_default, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(bench, "SPLIT_KEY_IN_EAGER", True)
    _, eager = decode_logits(model, prompt, 5, forced=tokens)
    monkeypatch.setattr(kernel, "decode_attention", original)
    monkeypatch.setattr(bench, "SPLIT_KEY_IN_EAGER", False)  # the compiled step below takes the op anyway
    assert calls and all(s == ((2, 2, 2, 16) if family != "llama2" else (2, 4, 1, 16)) for s in calls)
    torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    counters.clear()
    ops: list[str] = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "decode_attention" in str(n.target))
        return gm.forward

    _, compiled = decode_logits(model, prompt, 5, step=torch.compile(model, fullgraph=True, backend=backend), forced=tokens)
    assert ops and int(counters["stats"]["unique_graphs"]) == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled, ref, rtol=1e-5, atol=1e-5)


def test_split_key_attention_with_padding_generates_as_sdpa(monkeypatch):
    """Left-padded `generate` (a mask per sequence, prompts through the fallback) on the reference path."""
    from .test_decode import assert_padded_generate_matches_sdpa

    monkeypatch.setattr(bench, "SPLIT_KEY_IN_EAGER", True)  # eager decode steps through the op

    assert_padded_generate_matches_sdpa(tiny_model("llama3"), use_split_key_attention)


# ---------------------------------------------------------------- GPU (run on the lent H200)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 8, 4, 384, 128), (4, 8, 4, 2304, 128), (3, 4, 7, 1000, 64), (2, 8, 1, 65, 256)])
def test_gpu_kernel_matches_sdpa(case, dtype):
    """Llama-3-8B's attention at a 384- and a 2304-key static cache, odd groups and lengths: against fp64
    SDPA, with the same bound as on the CPU and no worse than SDPA's own error in that dtype plus 50 %."""
    b, h, g, n, d = case
    q, k, v, mask = random_case(b, h, g, n, d, dtype, device="cuda", seed=sum(case), gap=(64, 256))
    scale = d ** -0.5
    out = torch.ops.rsparse.decode_attention(q, k, v, mask, scale)
    torch.cuda.synchronize()
    err = relative_error(out, q, k, v, mask, scale)
    sdpa_err = relative_error(decode_attention_reference(q, k, v, mask, scale), q, k, v, mask, scale)
    print(f"{case} {dtype}: split-key {err:.2e}, SDPA {sdpa_err:.2e}")
    assert torch.isfinite(out).all() and err < TOLERANCE[dtype] and err <= 1.5 * sdpa_err + 1e-6


@pytest.mark.gpu
@needs_cuda
def test_gpu_kernel_in_a_cuda_graph():
    q, k, v, mask = random_case(2, 8, 4, 384, 128, torch.bfloat16, device="cuda", seed=9)
    out = torch.ops.rsparse.decode_attention(q, k, v, mask, 0.088)  # sizes the workspace outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.rsparse.decode_attention(q, k, v, mask, 0.088)
    for seed in range(3):  # new inputs in the same buffers
        fresh = random_case(2, 8, 4, 384, 128, torch.bfloat16, device="cuda", seed=10 + seed)
        for dst, src in zip((q, k, v, mask), fresh):
            dst.copy_(src)
        graph.replay()
        torch.testing.assert_close(captured, torch.ops.rsparse.decode_attention(q, k, v, mask, 0.088), rtol=0, atol=0)
    assert relative_error(captured, q, k, v, mask, 0.088) < 1e-2 and out.shape == captured.shape


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_split_key_attention_compiled_decode(dtype):
    """A sparsified model's compiled Triton decode with the split-key attention: one graph, the logits of
    SDPA on the same tokens (fp32 to rounding; bf16 as the teacher-forced rule of test_decode allows)."""
    from .test_decode import assert_attention_matches_sdpa

    assert_attention_matches_sdpa(dtype, use_split_key_attention, "split-key")
