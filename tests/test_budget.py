import math

import pytest

from rsparse.budget import layer_budget, model_sparsity, uniform_budgets


@pytest.mark.parametrize("n,m", [(4096, 14336), (14336, 4096), (4096, 1024), (576, 192)])
@pytest.mark.parametrize("s,rho", [(0.5, 1.0), (0.5, 0.8), (0.7, 0.9), (0.0, 1.0), (0.4, 0.0)])
def test_layer_budget_matches_formulas(n, m, s, rho):
    b = layer_budget(n, m, s, rho)
    assert b.k == pytest.approx(rho * (1 - s) * n)
    assert b.r == math.floor((1 - rho) * (1 - s) * m * n / (m + n) + 1e-9)
    # The bytes streamed per token stay within the budget (DESIGN.md §2).
    assert b.k * m + b.r * (n + m) <= (1 - s) * m * n + 1e-6


def test_gqa_projection_budget_uses_its_own_shape():
    # k_proj of Llama-3-8B is 4096 -> 1024: its rank must come from that shape, not 4096x4096.
    assert layer_budget(4096, 1024, 0.5, 0.8).r == math.floor(0.2 * 0.5 * 4096 * 1024 / 5120)
    assert layer_budget(4096, 1024, 0.5, 0.8).r < layer_budget(4096, 4096, 0.5, 0.8).r


def test_model_sparsity_is_weight_count_weighted():
    budgets = [layer_budget(100, 100, 0.2, 1.0), layer_budget(100, 300, 0.6, 1.0)]
    assert model_sparsity(budgets) == pytest.approx((1e4 * 0.2 + 3e4 * 0.6) / 4e4)
    assert model_sparsity([]) == 0.0


def test_uniform_budgets_hit_target():
    budgets = uniform_budgets({"a": (64, 96), "b": (96, 64), "c": (64, 16)}, 0.5, 0.9)
    assert model_sparsity(budgets.values()) == pytest.approx(0.5)
    assert set(budgets) == {"a", "b", "c"}


@pytest.mark.parametrize("s,rho,match", [(1.0, 1.0, "s must be in"), (-0.1, 1.0, "s must be in"), (0.5, 1.5, "rho must be in")])
def test_layer_budget_rejects_out_of_range(s, rho, match):
    with pytest.raises(ValueError, match=match):
        layer_budget(8, 8, s, rho)
