import pytest
import torch
from torch import nn

import rsparse
from rsparse.factorize import lowrank_factors
from rsparse.nn import RSparseLinear, column_norms
from rsparse.ops import sparse_linear_reference


def _layer(n=48, m=40, r=4, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n, m, bias=bias).to(dtype)
    a, b = lowrank_factors(lin.weight, r)
    return lin, RSparseLinear.from_linear(lin, tau=0.3, lowrank_in=a, lowrank_out=b)


def test_weight_is_stored_transposed_once():
    lin, sparse = _layer()
    assert sparse.weight_t.shape == (48, 40) and sparse.weight_t.is_contiguous()
    torch.testing.assert_close(sparse.weight, lin.weight)
    assert sparse.weight.data_ptr() == sparse.weight_t.data_ptr()  # a view, not a second copy
    assert sparse.bias.data_ptr() == lin.bias.data_ptr() and not sparse.bias.requires_grad
    assert set(sparse.state_dict()) == {"weight_t", "c", "tau", "lowrank_in", "lowrank_out", "bias"}
    torch.testing.assert_close(sparse.c, column_norms(lin.weight))


@pytest.mark.parametrize("tokens", [1, 8, 9, 40])
def test_modes_pick_the_path_from_the_token_count(tokens):
    lin, sparse = _layer()
    x = torch.randn(1, tokens, 48)
    args = (sparse.weight_t, sparse.c, sparse.tau, sparse.lowrank_in, sparse.lowrank_out, sparse.bias)
    want_sparse = sparse_linear_reference(x.view(-1, 48), *args).view(1, tokens, 40)
    want_dense = lin(x)
    sparse.set_mode("auto")  # decode_cutoff=8
    torch.testing.assert_close(sparse(x), want_sparse if tokens <= 8 else want_dense)
    sparse.set_mode("sparse")
    torch.testing.assert_close(sparse(x), want_sparse)
    sparse.set_mode("dense")
    torch.testing.assert_close(sparse(x), want_dense)
    assert not torch.allclose(want_sparse, want_dense)  # the two paths really differ here


def test_dtype_cast_keeps_score_inputs_fp32():
    _, sparse = _layer()
    sparse.to(torch.bfloat16)
    assert sparse.weight_t.dtype == torch.bfloat16 and sparse.lowrank_in.dtype == torch.bfloat16
    assert sparse.c.dtype == torch.float32 and sparse.tau.dtype == torch.float32


def test_set_mode_validates_and_needs_sparse_modules():
    _, sparse = _layer()
    with pytest.raises(ValueError, match=r"mode must be one of \['auto', 'sparse', 'dense'\], got 'fast'"):
        sparse.set_mode("fast")
    with pytest.raises(ValueError, match="holds no RSparseLinear"):
        rsparse.set_mode(nn.Sequential(nn.Linear(2, 2)), "sparse")


def test_lowrank_factors_reconstruct_and_truncate():
    w = torch.randn(30, 20)
    a, b = lowrank_factors(w, 20)
    torch.testing.assert_close(a @ b, w.T, atol=1e-4, rtol=1e-4)
    a, b = lowrank_factors(w, 3)
    assert a.shape == (20, 3) and b.shape == (3, 30)
    # The truncation is the best rank-3 approximation: its error is the tail of the spectrum.
    s = torch.linalg.svdvals(w)
    assert (w.T - a @ b).norm() == pytest.approx(s[3:].norm().item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 20\], got 21"):
        lowrank_factors(w, 21)


def test_direct_call_only_for_plain_eager_cuda_tensors():
    from rsparse.nn import direct_call

    assert not direct_call(torch.zeros(2, 3))  # CPU: through the dispatcher
    with torch.device("meta"):
        assert not direct_call(torch.zeros(2, 3))
    if torch.cuda.is_available():
        x = torch.zeros(2, 3, device="cuda")
        assert direct_call(x)
        assert not direct_call(x.requires_grad_())  # autograd sees the op


@pytest.mark.parametrize("bits", [16, 4])
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused"])
def test_direct_call_gives_the_op_result(fused, bits, monkeypatch):
    # Eager CUDA calls skip the dispatcher; the function they run must be the op's own (with 4-bit
    # factors: the packed tensors and their ranges reach it too).
    import rsparse.nn as rnn
    from rsparse.budget import layer_budget
    from rsparse.nn import forward_shared_input

    torch.manual_seed(0)
    rank = 0 if bits == 16 else 5
    mods = [
        RSparseLinear.from_linear(
            torch.nn.Linear(40, m), tau=0.5, budget=layer_budget(40, m, s=0.5, rho=1.0), mode="sparse",
            lowrank_in=torch.randn(40, rank) if rank else None, lowrank_out=torch.randn(rank, m) if rank else None,
            factor_bits=bits,
        )
        for m in (24, 16)
    ]
    x = torch.randn(3, 40)
    via_op = forward_shared_input(x, mods) if fused else [mods[0](x)]
    calls = []
    run, run_multi = rnn.backend.run_sparse_linear, rnn.backend.run_sparse_linear_multi
    monkeypatch.setattr(rnn, "direct_call", lambda x: True)
    monkeypatch.setattr(rnn.backend, "run_sparse_linear", lambda *a, **k: calls.append("one") or run(*a, **k))
    monkeypatch.setattr(rnn.backend, "run_sparse_linear_multi", lambda *a, **k: calls.append("multi") or run_multi(*a, **k))
    direct = forward_shared_input(x, mods) if fused else [mods[0](x)]
    assert calls == (["multi"] if fused else ["one"])
    for a, b in zip(direct, via_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
