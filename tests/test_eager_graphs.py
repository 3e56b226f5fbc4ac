"""Eager decode calls replayed from CUDA graphs (`rsparse.eager_graphs`).

On the CPU the cache logic runs against a stand-in for the captured graph (the same static-buffer
semantics, no CUDA); the GPU tests capture real graphs and compare with uncaptured calls.
"""

import copy
import logging
import pickle

import pytest
import torch

import rsparse
import rsparse.nn as rnn
from rsparse import eager_graphs
from rsparse.budget import layer_budget
from rsparse.nn import RSparseLinear, forward_shared_input


class FakeCapture:
    """Stands in for `CapturedCall`: static input copies, ``fn`` run at replay, outputs cloned."""

    made: list = []

    def __init__(self, fn, inputs):
        self.fn, self.inputs, self.stream = fn, eager_graphs.static_copies(inputs), 0
        self.replays = 0
        FakeCapture.made.append(self)

    def replay(self, inputs):
        for s, t in zip(self.inputs, inputs):
            s.copy_(t)
        self.replays += 1
        out = self.fn(*self.inputs)
        return [o.clone() for o in out] if isinstance(out, list) else out.clone()


@pytest.fixture
def fake_cuda(monkeypatch):
    """Eager calls on CPU tensors take the graph path, with `FakeCapture` in place of CUDA graphs."""
    FakeCapture.made = []
    monkeypatch.setattr(eager_graphs, "CapturedCall", FakeCapture)
    monkeypatch.setattr(eager_graphs, "_capturable", lambda x: True)
    monkeypatch.setattr(eager_graphs, "_stream_id", lambda index: 0)
    monkeypatch.setattr(rnn, "direct_call", lambda x: True)
    eager_graphs.invalidate()
    yield
    eager_graphs.set_enabled(True)
    eager_graphs.invalidate()


def _layers(ms=(24,), n=40, rank=0, seed=0):
    torch.manual_seed(seed)
    out = []
    for m in ms:
        lin = torch.nn.Linear(n, m)
        a = b = None
        if rank:
            from rsparse.factorize import lowrank_factors

            a, b = lowrank_factors(lin.weight, rank)
        out.append(RSparseLinear.from_linear(lin, tau=0.5, lowrank_in=a, lowrank_out=b,
                                             budget=layer_budget(n, m, s=0.5, rho=1.0), mode="sparse"))
    return out


def test_second_call_captures_and_later_calls_replay(fake_cuda):
    (layer,) = _layers(rank=4)
    xs = [torch.randn(1, 40) for _ in range(4)]
    want = [layer._run_direct(x) for x in xs]
    got = [layer(x) for x in xs]
    assert len(FakeCapture.made) == 1  # seen once, captured on the second call, replayed after
    assert FakeCapture.made[0].replays == 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got[1].data_ptr() != got[2].data_ptr()  # outputs are clones: a caller may keep them


@pytest.mark.parametrize("kind", ["fused", "silu"])
def test_fused_and_silu_calls_give_the_op_results(fake_cuda, kind):
    mods = _layers(ms=(24, 16))
    x = torch.randn(2, 40)
    if kind == "fused":
        want = rsparse.ops.fused.sparse_linear_multi_reference(
            x, *[[getattr(m, a) for m in mods] for a in ("weight_t", "c", "tau", "lowrank_in", "lowrank_out", "bias")])
        for _ in range(3):
            got = forward_shared_input(x, mods)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)
    else:
        (down,) = _layers(ms=(16,))
        gate, up = torch.randn(2, 40), torch.randn(2, 40)
        want = down._run_direct(torch.nn.functional.silu(gate) * up)
        for _ in range(3):
            torch.testing.assert_close(down.forward_silu_mul(gate, up), want)
    assert len(FakeCapture.made) == 1 and FakeCapture.made[0].replays == 2


def test_new_pointers_backend_or_settings_make_a_new_graph(fake_cuda):
    (layer,) = _layers()
    x = torch.randn(1, 40)
    for _ in range(2):
        layer(x)
    assert len(FakeCapture.made) == 1
    layer.weight_t = torch.nn.Parameter(layer.weight_t.detach() * 2, requires_grad=False)  # re-assigned tensor
    for _ in range(2):
        y = layer(x)
    assert len(FakeCapture.made) == 2
    torch.testing.assert_close(y, layer._run_direct(x))
    layer.tau.fill_(10.0)  # an in-place edit keeps the key: the replay reads the new value
    torch.testing.assert_close(layer(x), layer._run_direct(x))
    assert len(FakeCapture.made) == 2
    rsparse.set_backend("torch")  # another backend: the old graphs are never replayed
    for _ in range(2):
        layer(x)
    assert len(FakeCapture.made) == 3
    rsparse.set_backend("auto")


def test_batches_above_the_limit_and_other_streams_run_uncaptured(fake_cuda, monkeypatch):
    (layer,) = _layers()
    big = torch.randn(eager_graphs.MAX_TOKENS + 1, 40)
    for _ in range(3):
        layer(big)
    assert FakeCapture.made == []
    x = torch.randn(1, 40)
    for _ in range(2):
        layer(x)
    assert FakeCapture.made[0].replays == 1
    monkeypatch.setattr(eager_graphs, "_stream_id", lambda index: 7)  # the caller switched streams
    torch.testing.assert_close(layer(x), layer._run_direct(x))
    assert FakeCapture.made[0].replays == 1


def test_a_failed_capture_is_logged_once_and_runs_uncaptured(fake_cuda, monkeypatch, caplog):
    attempts = []

    def failing(fn, inputs):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(eager_graphs, "CapturedCall", failing)
    (layer,) = _layers()
    x = torch.randn(1, 40)
    with caplog.at_level(logging.WARNING, logger="rsparse.eager_graphs"):
        ys = [layer(x) for _ in range(4)]
    assert len(attempts) == 1 and "could not be captured" in caplog.text
    for y in ys:
        torch.testing.assert_close(y, layer._run_direct(x))


def test_graphs_made_in_inference_mode_replay_outside_it(fake_cuda):
    (layer,) = _layers()
    x = torch.randn(1, 40)
    with torch.inference_mode():
        for _ in range(2):
            layer(x)  # captured here: its static input must not be an inference tensor
    assert not FakeCapture.made[0].inputs[0].is_inference()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer._run_direct(x))
    assert FakeCapture.made[0].replays == 2


def test_switch_cache_bound_and_module_copies(fake_cuda):
    (layer,) = _layers()
    with pytest.raises(ValueError, match="enabled must be a bool, got 'no'"):
        eager_graphs.set_enabled("no")
    eager_graphs.set_enabled(False)
    assert not eager_graphs.is_enabled()
    for _ in range(3):
        layer(torch.randn(1, 40))
    assert FakeCapture.made == []
    eager_graphs.set_enabled(True)
    for t in range(1, eager_graphs.MAX_GRAPHS + 2):  # more keys than a module keeps: it starts over
        layer(torch.randn(t, 40))
    assert len(eager_graphs._GRAPHS[layer]) == 1
    for _ in range(2):
        layer(torch.randn(1, 40))
    copy.deepcopy(layer), pickle.dumps(layer)  # the graphs are not module state
    layer.to(torch.float64)  # moved tensors: the module's graphs are dropped
    assert layer not in eager_graphs._GRAPHS


def _tiny_sparse_llama():
    from tests.conftest import random_tokens, tiny_model

    model = tiny_model("llama3")
    rsparse.sparsify(model, 0.5, calibration=random_tokens(8, 32, seed=1), search="none", show_progress=False)
    return model


def _tags(module) -> list[str]:
    return [key[0] for key in eager_graphs._GRAPHS.get(module, {})]


def test_whole_mlp_is_one_graph_with_the_layer_by_layer_result(fake_cuda):
    model = _tiny_sparse_llama()
    mlp = model.model.layers[0].mlp
    xs = [torch.randn(1, 1, model.config.hidden_size) for _ in range(4)]
    with torch.no_grad():
        eager_graphs.set_enabled(False)
        want = [mlp(x) for x in xs]
        eager_graphs.set_enabled(True)
        got = [mlp(x) for x in xs]
    assert _tags(mlp.down_proj) == ["mlp"]  # one graph for gate/up and down
    assert _tags(mlp.gate_proj) == [] and len(FakeCapture.made) == 1 and FakeCapture.made[0].replays == 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_whole_mlp_graph_leaves_observed_or_unfused_layers_to_their_calls(fake_cuda):
    model = _tiny_sparse_llama()
    mlp = model.model.layers[0].mlp
    x = torch.randn(1, 1, model.config.hidden_size)
    seen = []
    handle = mlp.up_proj.register_forward_hook(lambda mod, args, out: seen.append(out))
    with torch.no_grad():
        for _ in range(3):
            mlp(x)
    handle.remove()
    assert len(seen) == 3 and "mlp" not in _tags(mlp.down_proj)  # the hook ran on every call
    rsparse.fuse.set_fusion(model, False)
    with torch.no_grad():
        for _ in range(3):
            mlp(x)
    assert "mlp" not in _tags(mlp.down_proj)


def test_whole_mlp_graph_needs_every_layer_on_the_kernel_for_its_own_input():
    from rsparse.fuse_silu import _whole_mlp_launches

    model = _tiny_sparse_llama()
    mlp = model.model.layers[0].mlp
    hidden = model.config.hidden_size
    assert [_whole_mlp_launches(mlp, torch.randn(1, t, hidden)) is not None for t in (1, 8, 9)] == [True, True, False]
    mlp.down_proj.decode_cutoff = 2  # down_proj sees as many rows as the MLP, not its width's share
    assert [_whole_mlp_launches(mlp, torch.randn(1, t, hidden)) is not None for t in (2, 3)] == [True, False]
    mlp.down_proj.set_mode("dense")
    assert _whole_mlp_launches(mlp, torch.randn(1, 1, hidden)) is None


# --------------------------------------------------------------------------- on the GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _gpu_layers(ms, n, dtype, active, rank=0, seed=0):
    """Layers on the GPU whose thresholds keep about ``active`` of the channels of unit-normal inputs."""
    torch.manual_seed(seed)
    mods = []
    for m in ms:
        lin = torch.nn.Linear(n, m, bias=False, device="cuda", dtype=dtype).requires_grad_(False)
        a = b = None
        if rank:
            from rsparse.factorize import lowrank_factors

            a, b = lowrank_factors(lin.weight, rank)
        mod = RSparseLinear.from_linear(lin, tau=0.0, lowrank_in=a, lowrank_out=b,
                                        budget=layer_budget(n, m, s=1 - active, rho=1.0), mode="sparse")
        score = (torch.randn(4096, n, device="cuda").abs() * mod.c).flatten()
        mod.tau.fill_(float(score.kthvalue(int((1 - active) * score.numel())).values))
        mods.append(mod)
    return mods


def _captured(module) -> bool:
    return any(isinstance(v, eager_graphs.CapturedCall) for v in eager_graphs._GRAPHS.get(module, {}).values())


# (output widths, input width, active fraction, rank): the one-token paths of `choose_config` —
# run 4's launch (small and with a rank), the inline launch (tall), the compact pair (wide).
GPU_CASES = {
    "splitk": ((384,), 256, 0.5, 0),
    "splitk_rank": ((384,), 256, 0.5, 16),
    "qkv_fused": ((256, 64, 64), 256, 0.5, 0),
    "inline_tall": ((4096,), 8192, 0.5, 0),
    "compact_wide": ((8192, 8192), 4096, 0.2, 0),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_replayed_calls_equal_uncaptured_calls(case, tokens, dtype):
    ms, n, active, rank = GPU_CASES[case]
    mods = _gpu_layers(ms, n, dtype, active, rank)
    rsparse.set_backend("triton")
    try:
        run = (lambda x: forward_shared_input(x, mods)) if len(mods) > 1 else (lambda x: [mods[0](x)])
        xs = [torch.randn(tokens, n, device="cuda", dtype=dtype) for _ in range(5)]
        eager_graphs.set_enabled(False)
        want = [run(x) for x in xs]
        eager_graphs.set_enabled(True)
        got = [run(x) for x in xs]  # the first call runs uncaptured, the second captures, then replays
        torch.cuda.synchronize()
        assert _captured(mods[0]), "no graph was captured"
        for g, w in zip(got, want):  # fresh inputs every call, and the kept outputs stay intact
            for a, b in zip(g, w):
                assert a.isfinite().all()
                torch.testing.assert_close(a, b, **TOL[dtype])
    finally:
        rsparse.set_backend("auto")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_replayed_silu_mul_equals_uncaptured(dtype):
    (down,) = _gpu_layers((4096,), 8192, dtype, 0.5)
    rsparse.set_backend("triton")
    try:
        pairs = [(torch.randn(1, 8192, device="cuda", dtype=dtype), torch.randn(1, 8192, device="cuda", dtype=dtype))
                 for _ in range(4)]
        eager_graphs.set_enabled(False)
        want = [down.forward_silu_mul(g, u) for g, u in pairs]
        eager_graphs.set_enabled(True)
        got = [down.forward_silu_mul(g, u) for g, u in pairs]
        assert _captured(down)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL[dtype])
    finally:
        rsparse.set_backend("auto")


@pytest.mark.gpu
@needs_cuda
def test_gpu_eager_generate_with_graphs_gives_the_uncaptured_tokens():
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    calib = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(1)).cuda()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    prompt = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2)).cuda()
    kw = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, eos_token_id=None)
    rsparse.set_backend("triton")
    try:
        eager_graphs.set_enabled(False)
        want = model.generate(prompt, **kw)
        eager_graphs.set_enabled(True)
        got = model.generate(prompt, **kw)
        assert any(_captured(m) for m in list(eager_graphs._GRAPHS))
    finally:
        rsparse.set_backend("auto")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@needs_cuda
def test_gpu_graphs_capture_again_after_every_graph_was_dropped(caplog):
    # The allocator frees a shared pool with its last graph; capturing into it again must not happen.
    (layer,) = _gpu_layers((384,), 256, torch.bfloat16, 0.5)
    rsparse.set_backend("triton")
    try:
        x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
        want = layer._run_direct(x)
        with caplog.at_level(logging.WARNING, logger="rsparse.eager_graphs"):
            for _ in range(3):
                for _ in range(3):
                    y = layer(x)
                assert _captured(layer)
                torch.testing.assert_close(y, want, **TOL[torch.bfloat16])
                eager_graphs.invalidate()  # every graph dropped: their pool is released
        assert "could not be captured" not in caplog.text
    finally:
        rsparse.set_backend("auto")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 3])
def test_gpu_replayed_whole_mlp_equals_uncaptured(tokens, dtype):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=4096, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    calib = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(1)).cuda()
    rsparse.sparsify(model, 0.5, calibration=calib, search="none", show_progress=False)
    mlp = model.model.layers[0].mlp
    xs = [torch.randn(1, tokens, 1024, device="cuda", dtype=dtype) for _ in range(5)]
    rsparse.set_backend("triton")
    try:
        with torch.no_grad():
            eager_graphs.set_enabled(False)
            want = [mlp(x) for x in xs]
            eager_graphs.set_enabled(True)
            got = [mlp(x) for x in xs]
        torch.cuda.synchronize()
        assert _captured(mlp.down_proj) and "mlp" in _tags(mlp.down_proj)
        for a, b in zip(got, want):  # fresh inputs every call, kept outputs intact
            assert a.isfinite().all()
            torch.testing.assert_close(a, b, **TOL[dtype])
    finally:
        rsparse.set_backend("auto")
