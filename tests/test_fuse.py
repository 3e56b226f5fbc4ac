"""Shared-input groups (`rsparse.fuse`): one fused launch for q/k/v and gate/up, same outputs as
separate calls whatever the call order, nothing kept after a round."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rsparse
from rsparse.config import LayerBudget
from rsparse.fuse import SharedInputGroup, link_groups, linked_groups, set_fusion
from rsparse.nn import RSparseLinear, fused_forward, rsparse_modules

from .conftest import random_tokens, tiny_model

N = 48


class OpCalls(TorchDispatchMode):
    """Records ``(op, projections)`` for every rsparse op call that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.rsparse.sparse_linear.default:
            self.calls.append(("single", 1))
        elif func is torch.ops.rsparse.sparse_linear_multi.default:
            self.calls.append(("multi", len(args[1])))
        elif func is torch.ops.rsparse.sparse_linear_silu_mul.default:
            self.calls.append(("silu_mul", 1))
        return func(*args, **(kwargs or {}))


def _members(outs=(40, 16, 16), mode="sparse", seed=0) -> list[RSparseLinear]:
    torch.manual_seed(seed)
    layers = []
    for m in outs:
        lin = nn.Linear(N, m, bias=m == 16)
        rank = 3
        a, b = torch.randn(N, rank) * 0.1, torch.randn(rank, m) * 0.1
        layers.append(RSparseLinear.from_linear(lin, tau=0.5, lowrank_in=a, lowrank_out=b, mode=mode))
    return layers


def _separate(layers, x):
    return [layer.forward_alone(x) for layer in layers]


def _assert_empty(group: SharedInputGroup):
    assert group._input is None and group._outputs == [] and group._fused == []


def test_group_call_is_one_launch_with_bitwise_equal_outputs():
    q, k, v = layers = _members()
    group = SharedInputGroup(layers)
    x = torch.randn(2, 1, N)
    want = _separate(layers, x)
    with OpCalls() as ops:
        got = [q(x), k(x), v(x)]
    assert ops.calls == [("multi", 3)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    _assert_empty(group)


def test_nothing_is_kept_after_a_round():
    q, k, v = layers = _members()
    group = SharedInputGroup(layers)
    x = torch.randn(1, N)
    ref = weakref.ref(x)
    q(x)
    assert group._input is x and group._outputs[0] is None and group._outputs[1] is not None
    k(x), v(x)
    _assert_empty(group)
    del x
    gc.collect()
    assert ref() is None  # the group holds no reference to the input


@pytest.mark.parametrize(
    "calls",
    [
        ["k"],  # a member alone
        ["k", "v"],
        ["q", "q", "k", "v"],  # q twice
        ["v", "k", "q", "k", "v"],  # another order
        ["q", "k", "q", "v", "k", "v"],
        ["q", "k*", "v", "q*", "v*"],  # * = another tensor
    ],
)
def test_any_call_order_gives_the_separate_outputs(calls):
    layers = _members()
    by_name = dict(zip("qkv", layers))
    group = SharedInputGroup(layers)
    x, y = torch.randn(1, N), torch.randn(1, N)
    for call in calls:
        layer, inp = by_name[call[0]], (y if call.endswith("*") else x)
        torch.testing.assert_close(layer(inp), layer.forward_alone(inp), rtol=0, atol=0)
    # At most one round is left open: the one the last call of q started, holding only its input.
    if group._input is not None:
        last_q = [c for c in calls if c[0] == "q"][-1]
        assert group._input is (y if last_q.endswith("*") else x)
    with OpCalls() as ops:  # a full round afterwards still fuses and ends empty
        [layer(x) for layer in layers]
    assert ops.calls == [("multi", 3)]
    _assert_empty(group)


def test_member_alone_computes_nothing_for_the_others():
    q, k, v = layers = _members()
    group = SharedInputGroup(layers)
    with OpCalls() as ops:
        k(torch.randn(1, N))
    assert ops.calls == [("single", 1)]
    _assert_empty(group)


def test_in_place_edit_of_the_input_is_not_served_stale():
    q, k, v = _members()
    SharedInputGroup([q, k, v])
    x = torch.randn(1, N)
    q(x)
    x.mul_(3.0)
    torch.testing.assert_close(k(x), k.forward_alone(x), rtol=0, atol=0)
    torch.testing.assert_close(v(x), v.forward_alone(x), rtol=0, atol=0)


def test_grad_mode_and_inference_mode():
    q, k, v = layers = _members()
    group = SharedInputGroup(layers)
    x = torch.randn(1, N)
    want = _separate(layers, x)
    with torch.no_grad():
        q(x)
    with OpCalls() as ops:  # grad mode changed: k must not take what no_grad computed
        got_k = k(x)
    assert ops.calls == [("single", 1)]
    torch.testing.assert_close(got_k, want[1], rtol=0, atol=0)
    with torch.inference_mode():
        xi = torch.randn(1, N)
        with OpCalls() as ops:
            got = [layer(xi) for layer in layers]
        want_i = _separate(layers, xi)
    assert ops.calls == [("multi", 3)]
    for g, w in zip(got, want_i):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    _assert_empty(group)
    # An input that requires grad: same values and the same autograd flag as separate calls.
    xg = torch.randn(1, N, requires_grad=True)
    got = [layer(xg) for layer in layers]
    for g, w in zip(got, _separate(layers, xg)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
        assert g.requires_grad == w.requires_grad


def test_dense_calls_and_disabled_groups_do_not_fuse():
    layers = _members(mode="auto")  # decode_cutoff 8
    group = SharedInputGroup(layers)
    with OpCalls() as ops:
        [layer(torch.randn(9, N)) for layer in layers]  # a prefill-sized call: dense
    assert ops.calls == []
    model = nn.ModuleDict({n: m for n, m in zip("qkv", layers)})
    set_fusion(model, False)
    x = torch.randn(1, N)
    with OpCalls() as ops:
        [layer(x) for layer in layers]
    assert ops.calls == [("single", 1)] * 3
    set_fusion(model, True)
    with OpCalls() as ops:
        [layer(x) for layer in layers]
    assert ops.calls == [("multi", 3)]
    with pytest.raises(ValueError, match="enabled must be a bool, got 'no'"):
        set_fusion(model, "no")
    _assert_empty(group)


def test_a_member_on_the_dense_gemm_stays_out_of_the_launch():
    q, k, v = layers = _members()
    k.budget = LayerBudget(N, 16, s=0.0, rho=1.0, k=N, r=0)
    k.lowrank_in, k.lowrank_out = k.lowrank_in[:, :0], k.lowrank_out[:0]
    assert k.keeps_every_channel()
    group = SharedInputGroup(layers)
    x = torch.randn(1, N)
    want = _separate(layers, x)
    with OpCalls() as ops:
        got = [q(x), k(x), v(x)]
    assert ops.calls == [("multi", 2)]  # q and v in one launch, k through the dense GEMM
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    _assert_empty(group)



def test_a_member_that_keeps_every_channel_joins_its_group_launch_on_triton():
    # On the Triton kernels a layer whose budget keeps every channel takes the kernel for one token (as fast as the
    # dense GEMM or faster, and one launch with its siblings), and for batches only inside its group's launch (the
    # fused launch beat the members' GEMMs at batch 4); alone, with its group off, or on the torch backend a batch
    # keeps the GEMM.
    q, k, v = layers = _members(outs=(24, 8, 8))
    k.budget = LayerBudget(N, 8, s=0.0, rho=1.0, k=N, r=0)
    k.tau.fill_(-1.0)  # what calibration gives such a budget
    k.lowrank_in, k.lowrank_out = k.lowrank_in[:, :0], k.lowrank_out[:0]
    group = SharedInputGroup(layers)
    cases = (("triton", 1, [("multi", 3)]), ("triton", 2, [("multi", 3)]), ("triton", 4, [("multi", 3)]),
             ("torch", 1, [("multi", 2)]), ("torch", 2, [("multi", 2)]))
    for backend, T, launch in cases:
        x = torch.randn(T, N)
        rsparse.set_backend(backend)
        try:
            assert k.takes_kernel(x) == (backend == "triton")
            want = [q.forward_alone(x), k.forward_dense(x), v.forward_alone(x)]
            with OpCalls() as ops:
                got = [q(x), k(x), v(x)]
            if backend == "triton":  # the choice traces into one graph with the launch
                traced = torch.compile(lambda x: [q(x), k(x), v(x)], fullgraph=True, backend="eager")(x)
                for g, w in zip(traced, got):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        finally:
            rsparse.set_backend("auto")
        assert ops.calls == launch, (backend, T)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        _assert_empty(group)
    # With the group switched off, or without a group, batches go back to the GEMM; one token keeps the kernel.
    rsparse.set_backend("triton")
    try:
        group.enabled = False
        assert not k.takes_kernel(torch.randn(2, N)) and k.takes_kernel(torch.randn(1, N))
        with OpCalls() as ops:
            [q(torch.randn(2, N)), k(torch.randn(2, N)), v(torch.randn(2, N))]
        assert ops.calls == [("single", 1)] * 2  # q and v each on the kernel, k on the GEMM
        group.enabled = True
        alone = RSparseLinear.from_linear(nn.Linear(N, 8), tau=0.1)
        alone.budget = LayerBudget(N, 8, s=0.0, rho=1.0, k=N, r=0)
        alone.lowrank_in, alone.lowrank_out = alone.lowrank_in[:, :0], alone.lowrank_out[:0]
        assert alone.keeps_every_channel() and alone.shared_input is None
        assert alone.takes_kernel(torch.randn(1, N)) and not alone.takes_kernel(torch.randn(3, N))
        assert k.takes_kernel(torch.randn(1, 2, N)) and k.takes_kernel(torch.randn(2, 1, N))  # [batch, 1, n] too
    finally:
        rsparse.set_backend("auto")


def test_group_validation_and_link_errors():
    a, b, c = _members()
    with pytest.raises(ValueError, match="at least 2 RSparseLinear"):
        SharedInputGroup([a])
    other = RSparseLinear.from_linear(nn.Linear(N + 1, 8), tau=0.1)
    with pytest.raises(ValueError, match=r"must share in_features, got \[48, 49\]"):
        SharedInputGroup([a, other])
    model = nn.ModuleDict({"a": a, "b": b, "c": c})
    with pytest.raises(ValueError, match=r"names \['x'\], which are not RSparseLinear"):
        link_groups(model, [["a", "x"]])
    link_groups(model, [["a", "b"], ["c"]])  # a group of one is not a group
    assert linked_groups(model) == [["a", "b"]] and c.shared_input is None


def test_link_is_not_state_and_survives_deepcopy():
    layers = _members()
    model = nn.ModuleDict({n: m for n, m in zip("qkv", layers)})
    keys = set(model.state_dict())
    link_groups(model, [["q", "k", "v"]])
    assert set(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    assert linked_groups(twin) == [["q", "k", "v"]]
    assert twin["q"].shared_input is twin["v"].shared_input is not model["q"].shared_input
    assert twin["q"].shared_input.members[1] is twin["k"]
    x = torch.randn(1, N)
    for n in "qkv":
        torch.testing.assert_close(twin[n](x), model[n].forward_alone(x), rtol=0, atol=0)


# ------------------------------------------------------------------ whole models


def _sparse(family="llama3", target=0.5):
    model = tiny_model(family)
    rsparse.sparsify(model, target, calibration=random_tokens(8, 32, seed=1), show_progress=False)
    return model


@pytest.mark.parametrize("family", ["llama3", "qwen3", "gemma2"])
def test_sparsify_links_qkv_and_gate_up_and_decode_is_unchanged(family):
    model = _sparse(family)
    groups = linked_groups(model)
    assert groups == model.rsparse_config.groups
    suffixes = [[n.rsplit(".", 1)[1] for n in g] for g in groups]
    assert suffixes == [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]] * 2
    prompt = random_tokens(2, 16, seed=3)
    kw = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with OpCalls() as ops:
        fused = model.generate(prompt, **kw)
    # Per decode step and decoder layer: q/k/v in one launch, o, gate/up in one launch, down
    # (fed gate and up where the MLP is SiLU-gated; Gemma's activation is GELU).
    down = ("single", 1) if family == "gemma2" else ("silu_mul", 1)
    assert ops.calls == [("multi", 3), ("single", 1), ("multi", 2), down] * 2 * 5
    set_fusion(model, False)
    with OpCalls() as ops:
        alone = model.generate(prompt, **kw)
    assert ops.calls == [("single", 1)] * 7 * 2 * 5  # every layer on its own
    torch.testing.assert_close(fused.sequences, alone.sequences, rtol=0, atol=0)
    for a, b in zip(fused.logits, alone.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # fp32, torch backend: bitwise
    for m in rsparse_modules(model).values():
        if m.shared_input is not None:
            _assert_empty(m.shared_input)


def test_fused_triton_matches_separate_triton():
    # CPU runs Triton under the interpreter (conftest); on CUDA this runs the real kernel.
    q, k, v = layers = _members(outs=(24, 8, 8))
    SharedInputGroup(layers)
    x = torch.randn(1, N)
    rsparse.set_backend("triton")
    try:
        want = _separate(layers, x)
        got = [q(x), k(x), v(x)]
    finally:
        rsparse.set_backend("auto")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_full_member_joins_the_launch_and_compiles(monkeypatch):
    # On CUDA with the default backend one token or a batch of a layer that keeps every channel takes the fused
    # launch, and the choice traces into one inductor graph (fullgraph) with the same outputs as the dense GEMM, to
    # bf16 rounding.
    import rsparse.fuse

    launches = []

    def counting(x, modules, norm=None):  # eager CUDA calls skip the dispatcher, so count the group's launches here
        launches.append(len(modules))
        return fused_forward(x, modules, norm)

    monkeypatch.setattr(rsparse.fuse, "fused_forward", counting)
    q, k, v = layers = [m.to("cuda", torch.bfloat16) for m in _members(outs=(1024, 256, 256))]
    k.budget = LayerBudget(N, 256, s=0.0, rho=1.0, k=N, r=0)
    k.tau.fill_(-1.0)
    k.lowrank_in, k.lowrank_out = k.lowrank_in[:, :0], k.lowrank_out[:0]
    SharedInputGroup(layers)
    for T in (1, 4):  # one token, and a batch (the group's launch serves its full member too)
        launches.clear()
        x = torch.randn(T, N, device="cuda", dtype=torch.bfloat16)
        want = [q.forward_alone(x), k.forward_dense(x), v.forward_alone(x)]
        got = [q(x), k(x), v(x)]
        assert launches == [3], T
        traced = torch.compile(lambda x: [q(x), k(x), v(x)], fullgraph=True)(x)
        for g, t, w in zip(got, traced, want):
            torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(t.float(), w.float(), rtol=2e-2, atol=2e-2)
