"""End-to-end decoding: `generate` (eager and static cache + torch.compile), the compiled decode
step (no graph breaks, no recompiles, same tokens as eager) and `rsparse.bench.decode_speed`.

CPU tests compile with the ``aot_eager`` backend: it traces the same full graph as inductor
(dynamo + AOT autograd, the custom op through its fake implementation) without generating
code, which takes minutes on the 2-core CI machine.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig

import rsparse
from rsparse.bench import compile_decode_step, decode_logits, decode_speed, decode_tokens
from rsparse.fuse import linked_groups, set_fusion
from rsparse.nn import fused_forward, rsparse_modules

from .conftest import FAMILIES, random_tokens, tiny_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPT = 16  # above the decode cut-off (8): the prefill takes the dense path in mode "auto"


class OpCalls(TorchDispatchMode):
    """Records the token count of every sparsified linear served by ``rsparse::sparse_linear``, by
    a fused ``rsparse::sparse_linear_multi`` launch (one entry per projection) or by
    ``rsparse::sparse_linear_silu_mul`` (a gated MLP's down projection), and the launches."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[int] = []
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.rsparse.sparse_linear.default, torch.ops.rsparse.sparse_linear_silu_mul.default):
            self.tokens.append(args[0].shape[0])
            self.launches += 1
        elif func is torch.ops.rsparse.sparse_linear_multi.default:
            self.tokens += [args[0].shape[0]] * len(args[1])
            self.launches += 1
        return func(*args, **(kwargs or {}))


def launches_per_step(model) -> int:
    """Sparse op calls per decode step: one per shared-input group (q/k/v, gate/up), one per other layer."""
    groups = linked_groups(model)
    return len(rsparse_modules(model)) - sum(len(g) - 1 for g in groups)


def sparse_model(target: float = 0.5, seed: int = 0, dtype=torch.float32):
    model = tiny_model("llama3", seed=seed, dtype=dtype)
    rsparse.sparsify(model, target, calibration=random_tokens(8, 32, seed=1), show_progress=False)
    return model


def greedy(model, prompt, new_tokens, **kw):
    out = model.generate(
        prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, **kw
    )
    return out[:, prompt.shape[1]:]


def cpu_compile_config(backend: str = "aot_eager") -> CompileConfig:
    cfg = CompileConfig(backend=backend, fullgraph=True)
    cfg._compile_all_devices = True  # generate compiles on CUDA only unless told otherwise
    return cfg


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_generate_auto_mode_prefill_dense_decode_sparse():
    model = sparse_model()
    linears = len(rsparse_modules(model))
    prompt, new = random_tokens(1, PROMPT, seed=3), 6
    with OpCalls() as calls:
        tokens = greedy(model, prompt, new)
    assert tokens.shape == (1, new)
    # The prefill (16 tokens) never reaches the sparse op; every decode step (1 token) sends
    # every sparsified linear through it, q/k/v and gate/up in one fused launch each.
    assert calls.tokens == [1] * (linears * (new - 1))
    assert launches_per_step(model) == 4 * 2  # q/k/v, o, gate/up, down in each of 2 layers
    assert calls.launches == launches_per_step(model) * (new - 1)

    rsparse.set_mode(model, "dense")
    with OpCalls() as calls:
        greedy(model, prompt, new)
    assert calls.tokens == []


def test_sparse_decode_changes_tokens_but_dense_mode_restores_them():
    # Guards the test above against a sparse path that silently equals the dense one.
    dense = tiny_model("llama3")
    model = sparse_model(0.7)
    prompt = random_tokens(2, PROMPT, seed=4)
    reference = greedy(dense, prompt, 12)
    rsparse.set_mode(model, "dense")
    torch.testing.assert_close(greedy(model, prompt, 12), reference, rtol=0, atol=0)
    rsparse.set_mode(model, "auto")
    assert not torch.equal(greedy(model, prompt, 12), reference)


def test_compiled_decode_step_is_one_graph_through_the_sparse_op():
    model = sparse_model()
    linears = len(rsparse_modules(model))
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    prompt, new = random_tokens(2, PROMPT, seed=5), 6  # 5 compiled steps
    eager = decode_tokens(model, prompt, new)
    step = compile_decode_step(model, backend=backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode_tokens(model, prompt, new, step=step)
        again = decode_tokens(model, prompt, new, step=step)  # a second run reuses the graph
    assert len(graphs) == 1 and counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    # One fused op per shared-input group (q/k/v, gate/up), one op per other layer.
    assert sum(op.startswith("rsparse.sparse_linear_multi") for op in ops) == len(linked_groups(model)) == 4
    assert sum(op.startswith("rsparse.sparse_linear") for op in ops) == launches_per_step(model) < linears
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    for m in rsparse_modules(model).values():  # the compiled rounds leave nothing kept
        assert m.shared_input is None or m.shared_input._input is None


def test_compiled_unfused_decode_is_one_op_per_linear_and_gives_the_same_tokens():
    model = sparse_model()
    prompt, new = random_tokens(2, PROMPT, seed=5), 6
    fused = decode_tokens(model, prompt, new)
    set_fusion(model, False)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode_tokens(model, prompt, new, step=compile_decode_step(model, backend=backend))
    assert len(graphs) == 1 and not counters["graph_break"]
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum(op.startswith("rsparse.sparse_linear") for op in ops) == len(rsparse_modules(model))
    assert not any(op.startswith("rsparse.sparse_linear_multi") for op in ops)
    torch.testing.assert_close(compiled, fused, rtol=0, atol=0)


def test_compiled_decode_aot_eager_tokens_equal_eager():
    model = sparse_model()
    prompt = random_tokens(2, PROMPT, seed=6)
    eager = decode_tokens(model, prompt, 10)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode_tokens(model, prompt, 10, step=compile_decode_step(model, backend="aot_eager"))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_compiled_decode_without_module_guards_gives_the_same_tokens_in_one_graph():
    model = sparse_model()
    prompt = random_tokens(2, PROMPT, seed=7)
    eager = decode_tokens(model, prompt, 10)
    torch._dynamo.reset()
    counters.clear()
    step = compile_decode_step(model, backend="aot_eager", skip_module_guards=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = decode_tokens(model, prompt, 10, step=step)
        again = decode_tokens(model, prompt, 10, step=step)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)


def test_compiled_decode_without_module_guards_skips_the_module_checks():
    """The option's point: the compiled step's guards no longer check the modules' tensors (the
    default step checks every parameter and buffer, the filtered one only the step's own inputs)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    model = sparse_model()
    prompt = random_tokens(1, PROMPT, seed=8)
    counts = {}
    for skip in (False, True):
        torch._dynamo.reset()
        decode_tokens(model, prompt, 4, step=compile_decode_step(model, backend="aot_eager", skip_module_guards=skip))
        forward = type(model).forward
        (entry,) = _debug_get_cache_entry_list(forward.__code__)
        counts[skip] = str(entry.guard_manager).count("TENSOR_MATCH")
    tensors = len([*model.parameters(), *model.buffers()])
    assert counts[False] >= tensors > counts[True], (counts, tensors)


def test_compile_decode_step_rejects_bad_guard_options():
    model = sparse_model()
    with pytest.raises(ValueError, match="skip_module_guards must be a bool"):
        compile_decode_step(model, skip_module_guards="yes")
    with pytest.raises(ValueError, match="takes no mode"):
        compile_decode_step(model, backend="aot_eager", mode="reduce-overhead", skip_module_guards=True)


def compiled_decode(model, prompt, new_tokens, backend="aot_eager"):
    """Eager tokens, then two compiled runs of one step function: ``(eager, compiled, again,
    graphs after the first compiled run, graphs after the second)``."""
    torch._dynamo.reset()
    counters.clear()
    eager = decode_tokens(model, prompt, new_tokens)
    step = compile_decode_step(model, backend=backend)
    compiled = decode_tokens(model, prompt, new_tokens, step=step)
    graphs = int(counters["stats"]["unique_graphs"])
    again = decode_tokens(model, prompt, new_tokens, step=step)
    return eager, compiled, again, graphs, int(counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_decode_of_every_family_adds_no_graph_over_dense(family):
    """Every supported family decodes through one compiled step function with no graph break and
    the eager tokens. Sliding-window caches (Mistral, Gemma 2/3) make dynamo compile the step twice,
    for dense models too (transformers' cache, not rsparse): the sparse model must compile exactly
    as many graphs as the dense one, and a second run must add none (no recompilation per step)."""
    prompt = random_tokens(2, PROMPT, seed=6)
    dense = tiny_model(family)
    *_, dense_graphs, _ = compiled_decode(dense, prompt, 8)
    model = tiny_model(family)
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1), show_progress=False)
    eager, compiled, again, graphs, graphs_after = compiled_decode(model, prompt, 8)
    assert not counters["graph_break"]
    assert graphs == dense_graphs and graphs_after == graphs
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    with OpCalls() as calls:  # the decode steps really take the sparse op: 7 steps x every linear the search kept sparse
        decode_tokens(model, prompt, 8)
    sparse = [m for m in rsparse_modules(model).values() if not m.keeps_every_channel()]
    assert len(sparse) >= len(rsparse_modules(model)) - 2
    assert calls.tokens == [2] * (7 * len(sparse))


def test_generate_static_cache_compiled_equals_eager():
    model = sparse_model()
    prompt, new = random_tokens(2, PROMPT, seed=7), 8
    eager = greedy(model, prompt, new)
    kw = dict(cache_implementation="static", compile_config=cpu_compile_config())
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = greedy(model, prompt, new, **kw)
        second = greedy(model, prompt, new, **kw)
    # generate compiles only when the quantizer allows it: the graph count proves it did.
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)


def test_decode_tokens_matches_generate():
    model = sparse_model()
    prompt = random_tokens(3, PROMPT, seed=8)
    torch.testing.assert_close(decode_tokens(model, prompt, 7), greedy(model, prompt, 7), rtol=0, atol=0)


@pytest.mark.parametrize("compile", [False, "aot_eager"])
def test_decode_speed_reports_settings_and_times(compile):
    model = sparse_model()
    r = decode_speed(model, batch_size=2, prompt_len=PROMPT, new_tokens=5, compile=compile, repeats=2)
    assert r["decode_steps"] == 4 and len(r["ms_per_token_runs"]) == 2
    assert r["ms_per_token"] > 0
    assert r["tokens_per_s"] == pytest.approx(2 * 1e3 / r["ms_per_token"])
    assert r["peak_memory_mb"] is None  # CPU
    assert r["model_memory_mb"] > 0
    assert (r["batch_size"], r["prompt_len"], r["new_tokens"], r["compile"]) == (2, PROMPT, 5, compile)
    if compile:
        assert r["graphs_compiled"] == 1 and r["graph_breaks"] == 0
    else:
        assert r["graphs_compiled"] is None


@pytest.mark.parametrize("kw", [{"new_tokens": 1}, {"batch_size": 0}, {"repeats": 0}, {"compile": 1}])
def test_decode_speed_rejects_bad_settings(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        decode_speed(tiny_model("llama3"), **kw)


@pytest.mark.slow
def test_smollm2_compiled_greedy_equals_eager():
    """Acceptance 2, first half: 64 greedy tokens of the sparse SmolLM2-135M (fp32), compiled
    decode step (shared-input groups fused) vs eager, fused and unfused. ``aot_eager`` by default; ``RSPARSE_TEST_INDUCTOR=1`` compiles with inductor
    (passed once on the 2-core dev machine: 370 s, too long for CI)."""
    # One thread: on 2026-11-30 (torch 2.13 CPU, transformers 5.24, numpy 2.4.6) eager and
    # aot_eager forked at 2 threads (55 of 64 tokens differ) and agreed at 1. A sparse model turns
    # rounding-level differences into different tokens (NOTES, "Strict-protocol scores move with
    # fp32 rounding"); which op rounds differently at 2 threads is not known yet.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _smollm2_compiled_vs_eager()
    finally:
        torch.set_num_threads(threads)


def _smollm2_compiled_vs_eager():
    from rsparse.eval import load_offline_model

    model, tokenizer = load_offline_model(torch.float32)
    # Attention written out in plain ops: PyTorch's fused CPU SDPA kernel and its aot_eager trace round
    # differently on some CPUs (2026-12-02, an AVX-512 AMD EPYC: 14 of 64 tokens agreed, parting at token
    # 8, on code that had passed on 2026-12-01; with eager attention all 64 agree). That difference is
    # torch's, not rsparse's; what this test checks is that the compiled sparse layers compute what the
    # eager ones do.
    model.set_attn_implementation("eager")
    calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    # The column-norm score, named: with score="auto" (the default) the search picks plain magnitude
    # here, and on this prompt compiled and eager then part at token 26. That is rounding, not a
    # different computation: teacher-forced on the same tokens their logits differ by at most 3e-5
    # for six steps, then a channel at its threshold flips and the difference grows (a sparse model
    # does that under any rounding change, e.g. 1 vs 2 CPU threads; NOTES, budget search notes,
    # "`score="auto"` is the default"). Exact token equality holds for this model and prompt only.
    rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", show_progress=False)
    prompt = tokenizer("The capital of France is a city that", return_tensors="pt").input_ids
    eager = decode_tokens(model, prompt, 64)
    set_fusion(model, False)  # q/k/v and gate/up one launch each, or every layer on its own: same tokens
    torch.testing.assert_close(decode_tokens(model, prompt, 64), eager, rtol=0, atol=0)
    set_fusion(model, True)
    backend = "inductor" if os.environ.get("RSPARSE_TEST_INDUCTOR") == "1" else "aot_eager"
    started = time.perf_counter()
    compiled = decode_tokens(model, prompt, 64, step=compile_decode_step(model, backend=backend))
    print(f"compiled ({backend}) decode of 64 tokens: {time.perf_counter() - started:.0f}s")
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


# ---------------------------------------------------------------- GPU (run on the lent H200)


def _gpu_sparse_model(dtype, target=0.5, layers=2):
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    calib = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(1)).cuda()
    rsparse.sparsify(model, target, calibration=calib, show_progress=False)
    return model


@pytest.mark.gpu
@needs_cuda
def test_gpu_compiled_fullgraph_decode_with_triton():
    model = _gpu_sparse_model(torch.float32)
    prompt = torch.randint(0, 512, (1, PROMPT), generator=torch.Generator().manual_seed(2)).cuda()
    rsparse.set_backend("triton")
    try:
        eager = decode_tokens(model, prompt, 16)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = decode_tokens(model, prompt, 16, step=compile_decode_step(model))  # inductor + CUDA graphs
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
        r = decode_speed(model, prompt_len=PROMPT, new_tokens=8, compile=True, repeats=1)
        assert r["graphs_compiled"] == 1 and r["graph_breaks"] == 0 and r["peak_memory_mb"] > 0
    finally:
        rsparse.set_backend("auto")
    agree = (compiled == eager).float().mean().item()
    print(f"compiled vs eager, Triton, fp32: {agree:.3f} of 16 tokens agree")
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_packed_attention_compiled_matches_sdpa(dtype):
    """The packed decode attention (4 query heads per K/V head) in the compiled Triton step: one graph, and the
    logits of transformers' SDPA on the same tokens (fp32 to rounding, bf16 by `assert_forced_close`)."""
    from rsparse.bench import use_packed_attention

    assert_attention_matches_sdpa(dtype, use_packed_attention, "packed")


def assert_attention_matches_sdpa(dtype, use_attention, name: str) -> None:
    """A sparsified model's compiled Triton decode with ``use_attention(model)`` against the same with SDPA on the
    same tokens: one graph, no break; fp32 logits to rounding, bf16 by the teacher-forced rule (a 3e-2 bound on
    every step failed on the H200, session 25: a rounding that moves one channel across its threshold changes the
    sparse model's later layers)."""
    model = _gpu_sparse_model(dtype)
    prompt = torch.randint(0, 512, (2, PROMPT), generator=torch.Generator().manual_seed(3)).cuda()
    rsparse.set_backend("triton")
    try:
        torch._dynamo.reset()
        tokens, ref = decode_logits(model, prompt, 16, step=compile_decode_step(model))
        use_attention(model)
        torch._dynamo.reset()
        counters.clear()
        _, got = decode_logits(model, prompt, 16, step=compile_decode_step(model), forced=tokens)
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    finally:
        rsparse.set_backend("auto")
        model.set_attn_implementation("sdpa")
    print(f"{name} vs sdpa attention, compiled, {dtype}:")
    if dtype == torch.float32:
        rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        print(f"  max relative logit difference {rel:.2e}")
        assert rel < 1e-4
    else:
        assert_forced_close(got, ref)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_triton_and_torch_backends_agree(dtype):
    """Compiled decode under the Triton and the PyTorch backend: the same greedy tokens in fp32; in
    bf16 the free-running agreement is reported (it read 0.641 in decode run 26) and the
    teacher-forced comparison of `assert_forced_close` is asserted."""
    model = _gpu_sparse_model(dtype)
    prompt = torch.randint(0, 512, (4, PROMPT), generator=torch.Generator().manual_seed(3)).cuda()
    out = {}
    for backend in ("torch", "triton"):
        rsparse.set_backend(backend)
        torch._dynamo.reset()  # CUDA graphs record the kernels of the backend at capture time
        try:
            out[backend] = decode_tokens(model, prompt, 32, step=compile_decode_step(model))
        finally:
            rsparse.set_backend("auto")
    agree = (out["torch"] == out["triton"]).float().mean().item()
    print(f"Triton vs torch backend, {dtype}, compiled, 4x32 greedy tokens: agreement {agree:.3f}")
    if dtype == torch.float32:
        torch.testing.assert_close(out["triton"], out["torch"], rtol=0, atol=0)
        return
    logits = {}
    for backend in ("torch", "triton"):
        rsparse.set_backend(backend)
        torch._dynamo.reset()
        try:
            logits[backend] = forced_logits(model, compile_decode_step(model), prompt, out["triton"])
        finally:
            rsparse.set_backend("auto")
    assert_forced_close(logits["triton"], logits["torch"])


def forced_logits(model, step, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits ``[batch, n, vocab]`` of the prefill and of ``n - 1`` decode calls by ``step``, call
    ``i`` fed ``tokens[:, i]`` (teacher forcing: two models compared on the same inputs)."""
    return decode_logits(model, prompt, tokens.shape[1], step=step, forced=tokens)[1]


def assert_forced_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two runs' teacher-forced logits (`forced_logits`, same inputs at every step) agree as bf16
    rounding allows: the same greedy choice at three steps in four or more, and logits within 5 %
    (median over steps, norm-wise). A launch that dropped or mixed up a projection's channels would
    miss both by far; thresholds not yet confirmed on the GPU (set in the fifteenth session)."""
    same_choice = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
    print(f"  teacher-forced: same choice {same_choice:.3f}, logits relative difference median "
          f"{rel.median().item():.2e}, max {rel.max().item():.2e}")
    assert same_choice >= 0.75, f"same greedy choice at {same_choice:.3f} of the teacher-forced steps, expected >= 0.75"
    assert rel.median().item() <= 0.05, f"median relative logit difference {rel.median().item():.3e}, expected <= 0.05"


def test_forced_logits_follow_the_given_tokens():
    """The teacher-forcing helper: fed the model's own greedy tokens it reproduces them, and fed
    other tokens its logits change from the first forced step on, not at the prefill."""
    model = tiny_model()
    prompt = random_tokens(2, PROMPT, seed=8)
    greedy = decode_tokens(model, prompt, 6)
    own = forced_logits(model, model, prompt, greedy)
    assert own.shape == (2, 6, model.config.vocab_size)
    assert torch.equal(own.argmax(-1), greedy)
    other = forced_logits(model, model, prompt, (greedy + 1) % model.config.vocab_size)
    assert torch.equal(other[:, 0], own[:, 0]) and not torch.equal(other[:, 1], own[:, 1])


def test_decode_logits_rejects_bad_lengths():
    model = tiny_model()
    prompt = random_tokens(1, PROMPT, seed=8)
    with pytest.raises(ValueError, match="new_tokens"):
        decode_logits(model, prompt, 0)
    with pytest.raises(ValueError, match="forced needs at least new_tokens - 1 = 4 columns, got 3"):
        decode_logits(model, prompt, 5, forced=prompt[:, :3])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_fused_and_unfused_triton_agree(dtype):
    """Compiled decode with the Triton backend, shared-input groups fused (one launch for q/k/v and
    one for gate/up) vs every layer on its own: the fused launch splits the channels into other
    chunks, so fp32 sums round differently; greedy tokens must still match in fp32.

    In bf16 the free-running agreement is reported, not asserted: one rounding-level difference on a
    near-tie of this random model parts the two sequences for good, and it read 1.000, 1.000, 0.672
    and 0.492 on the same code path (decode runs 9, 10, 15 and 26 in benchmarks/NOTES.md). Asserted
    instead, with both fed the fused run's tokens: the same greedy choice at most steps and logits
    within a few per cent (a launch that dropped or mixed up a projection's channels would miss
    both by far)."""
    model = _gpu_sparse_model(dtype)
    prompt = torch.randint(0, 512, (4, PROMPT), generator=torch.Generator().manual_seed(4)).cuda()
    out = {}
    rsparse.set_backend("triton")
    try:
        for fused in (True, False):
            set_fusion(model, fused)
            torch._dynamo.reset()
            out[fused] = decode_tokens(model, prompt, 32, step=compile_decode_step(model))
        agree = (out[True] == out[False]).float().mean().item()
        print(f"fused vs unfused, Triton, {dtype}, compiled, 4x32 greedy tokens: agreement {agree:.3f}")
        if dtype == torch.float32:
            torch.testing.assert_close(out[True], out[False], rtol=0, atol=0)
            return
        logits = {}
        for fused in (True, False):
            set_fusion(model, fused)
            torch._dynamo.reset()
            logits[fused] = forced_logits(model, compile_decode_step(model), prompt, out[True])
    finally:
        rsparse.set_backend("auto")
        set_fusion(model, True)
    assert_forced_close(logits[True], logits[False])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_every_family_compiled_triton_equals_eager_and_torch(family):
    """Each supported family on the GPU, fp32, sparsified at 0.5: the compiled decode (inductor,
    CUDA graphs) with the Triton backend gives the eager Triton tokens with no graph break and no
    graph added by a second run, and the eager torch backend gives the same tokens."""
    model = tiny_model(family).cuda()
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1).cuda(), show_progress=False)
    prompt = random_tokens(2, PROMPT, seed=6).cuda()
    rsparse.set_backend("triton")
    try:
        eager, compiled, again, graphs, graphs_after = compiled_decode(model, prompt, 12, backend="inductor")
        breaks = dict(counters["graph_break"])
        rsparse.set_backend("torch")
        reference = decode_tokens(model, prompt, 12)
    finally:
        rsparse.set_backend("auto")
    print(f"{family}: {graphs} graph(s), second run {graphs_after - graphs} more, breaks {breaks}")
    assert not breaks and graphs_after == graphs
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    torch.testing.assert_close(eager, reference, rtol=0, atol=0)


@pytest.mark.gpu
@needs_cuda
def test_gpu_smollm2_triton_agrees_with_torch_per_layer():
    """Acceptance 2 on a real model on the GPU: SmolLM2-135M sparsified at 0.5 (fp32).

    Asserted: every RSparseLinear computes under the Triton backend the very fp32 numbers it computes
    under the PyTorch one, on the real inputs of the prompt's prefill (8 rows per call: the batched
    launches, alone and fused per shared-input group) and of a decode step; and the 64 greedy tokens
    of eager decoding are the same under both backends. Both sum fp32 products in fp64 and round
    once on the GPU (`rsparse.ops.reference.sums_in_fp64`); before, the kernels' fp32 split-K sums
    differed by a rounding (4e-7 relative), which on a threshold became another forward pass, and
    the tokens agreed on 1-3 of 8 held-out prompts (benchmarks/NOTES.md, decode run 20). Reported:
    Triton compiled (inductor, CUDA graphs: inductor's own kernels for the model's other ops round
    differently from eager PyTorch) and bf16 against Triton eager. Skips where the offline model
    package (and the GGUF reader transformers needs) is missing."""
    from rsparse.eval import load_offline_model

    try:
        model, tokenizer = load_offline_model(torch.float32)
    except (ValueError, ImportError) as e:
        pytest.skip(f"offline SmolLM2 not loadable here: {e}")
    model = model.cuda()
    calib = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    # The column-norm score, as in the CPU test above (and as when this ran on the H200 before).
    rsparse.sparsify(model, 0.5, calibration=calib, score="rsparse", show_progress=False)
    prompt = tokenizer("The capital of France is a city that", return_tensors="pt").input_ids.cuda()
    mods = rsparse_modules(model)
    assert prompt.shape[1] <= next(iter(mods.values())).decode_cutoff  # the prefill runs the batched kernels too

    # Every layer's inputs during the prefill and the first decode step (hooks: layer-by-layer calls).
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: inputs.setdefault(name, []).append(args[0].clone()))
             for n, m in mods.items()]
    try:
        rsparse.set_backend("triton")
        decode_tokens(model, prompt, 2)
    finally:
        rsparse.set_backend("auto")
        for h in hooks:
            h.remove()
    worst, unequal, calls = 0.0, 0, 0
    try:
        with torch.no_grad():
            pairs = []
            for name, xs in inputs.items():
                for x in xs:
                    rsparse.set_backend("triton")
                    a = mods[name].forward_alone(x)
                    rsparse.set_backend("torch")
                    pairs.append((a, mods[name].forward_alone(x)))
            for names in linked_groups(model):  # the fused launch of each group on its prefill input
                x = inputs[names[0]][0]
                rsparse.set_backend("triton")
                fused = fused_forward(x, [mods[k] for k in names])
                rsparse.set_backend("torch")
                pairs += [(y, mods[k].forward_alone(x)) for y, k in zip(fused, names)]
    finally:
        rsparse.set_backend("auto")
    for a, b in pairs:
        calls += 1
        unequal += not torch.equal(a, b)
        worst = max(worst, ((a - b).norm() / b.norm()).item())
    print(f"SmolLM2 fp32, Triton vs torch, prefill and decode inputs: {unequal} of {calls} calls not bit-identical, "
          f"largest relative difference {worst:.2e}")

    out = {}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            runs = (("triton", False), ("triton", True)) + ((("torch", False),) if dtype == torch.float32 else ())
            for backend, compiled in runs:
                rsparse.set_backend(backend)
                torch._dynamo.reset()
                step = compile_decode_step(model) if compiled else None
                out[dtype, backend, compiled] = decode_tokens(model, prompt, 64, step=step)
    finally:
        rsparse.set_backend("auto")
    for dtype in (torch.float32, torch.bfloat16):
        ref = out[dtype, "triton", False]
        for key in ((dtype, "triton", True), (dtype, "torch", False)):
            if key not in out:
                continue
            agree = (out[key] == ref).float().mean().item()
            print(f"SmolLM2 {dtype}: {key[1]} {'compiled' if key[2] else 'eager'} vs triton eager, 64 tokens: {agree:.3f}")
    print("fp32 tokens:", tokenizer.decode(out[torch.float32, "triton", False][0]))
    assert unequal == 0
    torch.testing.assert_close(out[torch.float32, "torch", False], out[torch.float32, "triton", False], rtol=0, atol=0)
    for tokens in out.values():  # every run decoded 64 real tokens
        assert tokens.shape == (1, 64) and int(tokens.min()) >= 0 and int(tokens.max()) < model.config.vocab_size


class AttentionCalls(TorchDispatchMode):
    """Records the query shape of every scaled-dot-product attention op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.__name__:
            self.queries.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2", "qwen3", "phi3", "llama2"])
def test_packed_attention_decodes_as_sdpa(family):
    """`use_packed_attention`: a decode token's 4 query heads attend as 2 packed queries on each of the
    2 key/value heads (no expanded K/V), eager and compiled in one graph, with SDPA's logits; multi-head
    attention (llama2) and the prompt take transformers' own SDPA forward."""
    from rsparse.bench import use_packed_attention

    prompt = random_tokens(2, PROMPT, seed=6)
    model = tiny_model(family)
    tokens, ref = decode_logits(model, prompt, 6)
    use_packed_attention(model)
    with AttentionCalls() as calls:
        _, eager = decode_logits(model, prompt, 6, forced=tokens)
    packed = (2, 2, 2, 16) if family != "llama2" else (2, 4, 1, 16)
    assert calls.queries[-1] == packed and calls.queries[0] == (2, 4, PROMPT, 16)
    torch.testing.assert_close(eager, ref, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    counters.clear()
    traced: list[tuple[int, ...]] = []

    def backend(gm, example_inputs):  # records the query shape of the graph's attention calls, runs it as traced
        traced.extend(tuple(n.args[0].meta["example_value"].shape) for n in gm.graph.nodes
                      if n.op == "call_function" and "scaled_dot_product" in str(n.target))
        return gm.forward

    _, compiled = decode_logits(model, prompt, 6, step=torch.compile(model, fullgraph=True, backend=backend), forced=tokens)
    assert traced and set(traced) == {packed}
    assert int(counters["stats"]["unique_graphs"]) == (2 if family == "mistral" else 1) and not counters["graph_break"]
    torch.testing.assert_close(compiled, ref, rtol=1e-5, atol=1e-5)


def test_packed_attention_with_padding_and_a_sparse_model():
    """Left-padded batches (a mask per sequence) through `generate`, on a sparsified model: the same
    tokens as SDPA and the same scores."""
    from rsparse.bench import use_packed_attention

    model = tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1), show_progress=False)
    assert_padded_generate_matches_sdpa(model, use_packed_attention)


def assert_padded_generate_matches_sdpa(model, use_attention) -> None:
    """Left-padded `generate` (a mask per sequence) gives SDPA's tokens and scores after ``use_attention(model)``."""
    ids = random_tokens(2, PROMPT, seed=7)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # the first sequence is left-padded
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=0)
    ref = model.generate(ids, **kw)
    use_attention(model)
    got = model.generate(ids, **kw)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(ref.scores), rtol=1e-5, atol=1e-5)


def test_packed_attention_refuses_a_family_without_sdpa():
    from rsparse.bench import use_packed_attention

    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        use_packed_attention(tiny_model("gemma2"))
