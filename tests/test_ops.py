"""The reference op against an explicit gather computation, and the op's registration."""

import pytest
import torch

import rsparse.ops  # noqa: F401
from rsparse.ops import active_mask, sparse_linear_reference


def _inputs(T, n, m, r, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n, generator=g).to(dtype)
    w_t = (torch.randn(n, m, generator=g) / n**0.5).to(dtype)
    c = torch.rand(n, generator=g) + 0.5
    tau = torch.quantile((x.abs().float() * c).flatten(), 0.5)
    a = (torch.randn(n, r, generator=g) / n**0.5).to(dtype)
    b = (torch.randn(r, m, generator=g) / r**0.5 if r else torch.zeros(0, m)).to(dtype)
    bias_t = torch.randn(m, generator=g).to(dtype) if bias else None
    return x, w_t, c, tau, a, b, bias_t


def _gathered(x, w_t, c, tau, a, b, bias):
    """Token by token: gather the active rows, add the low-rank path of the rest (float64)."""
    out = []
    for row in x:
        act = active_mask(row[None], c, tau)[0]
        y = row[act].double() @ w_t[act].double()
        y = y + (row[~act].double() @ a[~act].double()) @ b.double()
        if bias is not None:
            y = y + bias.double()
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("T,n,m,r", [(1, 64, 96, 0), (3, 37, 53, 5), (8, 128, 32, 16)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("bias", [False, True])
def test_reference_equals_gather(T, n, m, r, dtype, tol, bias):
    args = _inputs(T, n, m, r, dtype, bias)
    got = sparse_linear_reference(*args)
    want = _gathered(*args)
    assert got.dtype == dtype and got.shape == (T, m)
    assert ((got.double() - want).norm() / want.norm()) < tol


def test_all_active_is_dense_and_none_active_is_lowrank():
    x, w_t, c, _, a, b, _ = _inputs(4, 32, 16, 4, torch.float32, False)
    dense = sparse_linear_reference(x, w_t, c, torch.tensor(-1.0), a, b, None)
    torch.testing.assert_close(dense, x @ w_t)
    lowrank = sparse_linear_reference(x, w_t, c, torch.tensor(float("inf")), a, b, None)
    torch.testing.assert_close(lowrank, x @ a @ b)


def test_custom_op_dispatches_to_reference_and_passes_opcheck():
    args = _inputs(3, 37, 53, 5, torch.float32, True)
    torch.testing.assert_close(torch.ops.rsparse.sparse_linear(*args), sparse_linear_reference(*args))
    torch.library.opcheck(torch.ops.rsparse.sparse_linear.default, args)
    torch.library.opcheck(torch.ops.rsparse.sparse_linear.default, _inputs(2, 16, 8, 0, torch.bfloat16, False))
