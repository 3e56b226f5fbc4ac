"""Per-layer budget search and activation-aware factorization."""

import pytest
import torch

import rsparse
from rsparse.budget import model_sparsity
from rsparse.calibrate import ScoreHistogram
from rsparse.config import RSparseConfig
from rsparse.factorize import lowrank_factors, weight_svd_residual, activation_aware_factors
from rsparse.install import LinearStats
from rsparse.search import _Tables, search_budgets, split_holdout
from tests.conftest import random_tokens, tiny_model


def _budgets(model):
    return {k: (b.s, b.rho, b.k, b.r) for k, b in model.rsparse_config.layers.items()}


def test_same_seed_gives_identical_budgets():
    calib = random_tokens(16, 64, seed=3)
    runs = []
    for _ in range(2):
        model = tiny_model("llama3", layers=3)
        rsparse.sparsify(model, 0.5, calibration=calib, seed=7, show_progress=False)
        runs.append(_budgets(model))
    assert runs[0] == runs[1]
    assert len({b[0] for b in runs[0].values()}) > 1  # the search moved budgets away from uniform


@pytest.mark.parametrize("family", ["llama3", "gemma2", "phi3"])
def test_searched_budgets_meet_target_and_beat_uniform_on_the_objective(family, calib):
    model = tiny_model(family, layers=3)
    targets = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    cfg = RSparseConfig(target=0.6, search_evaluations=12)
    result = search_budgets(model, targets, list(calib.split(8)), cfg, show_progress=False)
    assert model_sparsity(result.budgets.values()) == pytest.approx(0.6, abs=1e-9)
    assert result.budgets.keys() == targets.keys()
    assert result.kl <= result.uniform_kl
    assert 1 <= result.evaluations <= 12
    # The uniform pass was undone: the model is dense again, with its weights back.
    assert all(type(m) is torch.nn.Linear and m.weight.numel() for m in targets.values())


def test_auto_score_keeps_the_rule_with_the_lower_kl_and_records_it(calib):
    model = tiny_model("llama3", layers=2)
    targets = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    result = search_budgets(model, targets, list(calib.split(8)), RSparseConfig(target=0.6, search_evaluations=6),
                            show_progress=False)
    assert set(result.score_kl) == {"rsparse", "magnitude"}
    assert result.score == min(result.score_kl, key=result.score_kl.get)
    assert result.kl <= result.score_kl[result.score] and 1 <= result.evaluations <= 6
    assert all(type(m) is torch.nn.Linear and m.weight.numel() for m in targets.values())  # dense again
    for score in ("magnitude", "rsparse"):  # a rule given explicitly: one pass, no comparison
        fixed = search_budgets(model, targets, list(calib.split(8)),
                               RSparseConfig(target=0.6, score=score, search_evaluations=6), show_progress=False)
        assert fixed.score == score and fixed.score_kl is None
    # Too few evaluations to compare and refine: the column-norm rule, no comparison.
    small = search_budgets(model, targets, list(calib.split(8)), RSparseConfig(target=0.6, search_evaluations=2),
                           show_progress=False)
    assert small.score == "rsparse" and small.score_kl is None and small.evaluations <= 2


def test_sparsify_records_the_score_rule_it_used(calib):
    from rsparse.nn import column_norms, rsparse_modules

    model = tiny_model("llama3", layers=2)
    rsparse.sparsify(model, 0.6, calibration=calib, show_progress=False, config=RSparseConfig(search_evaluations=6))
    chosen = model.rsparse_config.score
    assert chosen in ("rsparse", "magnitude")
    for m in rsparse_modules(model).values():  # every layer's c follows the recorded rule
        want = torch.ones_like(m.c) if chosen == "magnitude" else column_norms(m.weight).float()
        torch.testing.assert_close(m.c, want)
    uniform = tiny_model("llama3", layers=2)
    rsparse.sparsify(uniform, 0.5, calibration=calib, search="none", show_progress=False)
    assert uniform.rsparse_config.score == "rsparse"


def test_searched_model_reports_its_budgets(calib, heldout):
    model = tiny_model("llama3", layers=3)
    rsparse.sparsify(model, 0.5, calibration=calib, config=RSparseConfig(search_evaluations=6), show_progress=False)
    report = rsparse.summary(model, tokens=heldout)
    assert report.model_sparsity == pytest.approx(0.5, abs=1e-6)
    by_name = {layer.name: layer for layer in report.layers}
    for name, b in model.rsparse_config.layers.items():
        assert by_name[name].s == pytest.approx(b.s)
        assert abs(by_name[name].kept - by_name[name].expected_kept) <= 0.08, by_name[name]


def _stats(hist_scores, energies, group=0, depth=0.0, rank=0):
    h = ScoreHistogram()
    h.add(hist_scores, energies)
    return LinearStats(h, group, depth, torch.ones(rank + 1, dtype=torch.float64), torch.zeros(8, rank), torch.zeros(rank, 8))


def test_allocation_keeps_a_fragile_layer_dense_and_pushes_a_robust_one_beyond_the_mean():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4096, generator=g) + 0.01
    # "fragile": energy spread evenly, so dropping any channel loses a lot; "robust": almost all
    # energy in the top 5% of scores, so the rest can go.
    fragile = _stats(scores, torch.ones_like(scores))
    robust_energy = torch.where(scores > torch.quantile(scores, 0.95), 1000.0, 1e-3)
    robust = _stats(scores, robust_energy)
    shapes = {"fragile": (8, 8), "robust": (8, 8)}
    cfg = RSparseConfig(target=0.45, rho=1.0)
    tables = _Tables({"fragile": fragile, "robust": robust}, shapes, (1.0,), cfg)
    allocation = tables.allocate({}, 0.45)
    assert allocation["fragile"][0] == pytest.approx(0.0, abs=0.02)  # dense
    assert allocation["robust"][0] == pytest.approx(0.9, abs=0.02)  # far beyond the mean
    assert (allocation["fragile"][0] + allocation["robust"][0]) / 2 == pytest.approx(0.45, abs=1e-9)


def test_allocation_respects_layer_bounds():
    scores = torch.rand(2048, generator=torch.Generator().manual_seed(1)) + 0.01
    stats = {"a": _stats(scores, torch.ones_like(scores)), "b": _stats(scores, scores**8)}
    cfg = RSparseConfig(target=0.5, rho=1.0, min_layer_sparsity=0.3, max_layer_sparsity=0.6)
    allocation = _Tables(stats, {"a": (8, 8), "b": (8, 8)}, (1.0,), cfg).allocate({}, 0.5)
    for s, _ in allocation.values():
        assert 0.3 - 1e-9 <= s <= 0.6 + 1e-9
    assert sum(s for s, _ in allocation.values()) / 2 == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 0.97}, r"max_layer_sparsity is 0.95"),
        ({"target": 0.1, "min_layer_sparsity": 0.2}, r"min_layer_sparsity is 0.2"),
        ({"search_evaluations": 0}, r"search_evaluations must be an int >= 1"),
        ({"min_layer_sparsity": 0.7, "max_layer_sparsity": 0.6}, r"0 <= min_layer_sparsity <= max_layer_sparsity < 1"),
        ({"factorization": "qr"}, r"factorization must be one of"),
        ({"search_holdout": 1.0}, r"search_holdout must be a float in \(0, 1\)"),
    ],
)
def test_bad_search_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSparseConfig(**kwargs)


def test_unreachable_target_is_fine_without_search():
    assert RSparseConfig(target=0.97, search="none").target == 0.97


def test_search_needs_two_sequences_and_leaves_model_dense():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least 2 calibration sequences"):
        rsparse.sparsify(model, 0.5, calibration=random_tokens(1, 80, seed=0), show_progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_split_holdout_by_sequence():
    batches = list(random_tokens(10, 4, seed=0).split(4))  # 4 + 4 + 2 rows
    fit, held = split_holdout(batches, 0.25)
    assert [b.shape[0] for b in fit] == [4, 4] and [b.shape[0] for b in held] == [2]
    fit, held = split_holdout(batches, 0.5)
    assert [b.shape[0] for b in fit] == [4, 1] and [b.shape[0] for b in held] == [3, 2]
    assert torch.equal(torch.cat(fit + held), torch.cat(batches))


def test_dropped_energy_curve_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(20000, generator=g).pow(3) + 1e-4
    energy = scores.square() * (1 + torch.rand(20000, generator=g))
    h = ScoreHistogram()
    h.add(scores, energy)
    fractions = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
    curve = h.dropped_energy_curve(fractions)
    order = torch.argsort(scores, descending=True)
    for f, got in zip(fractions.tolist(), curve.tolist()):
        kept = energy[order[: round(f * len(scores))]].sum()
        assert got == pytest.approx(1 - float(kept / energy.sum()), abs=0.01)
    assert curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)


def test_activation_aware_factors_beat_plain_svd_on_correlated_inputs():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(48, 32, generator=g)
    mix = torch.randn(32, 32, generator=g) * torch.logspace(0, -2, 32)
    x = torch.randn(4000, 32, generator=g) @ mix.t()
    sigma = (x.t() @ x / len(x)).double()
    for rank in (1, 4, 8):
        a, b, residual = activation_aware_factors(w, rank, sigma)
        pa, pb = lowrank_factors(w, rank)
        err = ((x @ w.t() - x @ a @ b) ** 2).sum(1).mean()
        plain = ((x @ w.t() - x @ pa @ pb) ** 2).sum(1).mean()
        assert err < 0.8 * plain
        assert float(residual[rank]) == pytest.approx(float(err), rel=0.02)
        assert float(weight_svd_residual(w, sigma)[rank]) == pytest.approx(float(plain), rel=0.02)


def test_activation_aware_factors_with_identity_are_the_plain_svd():
    w = torch.randn(12, 9, generator=torch.Generator().manual_seed(5))
    a, b, _ = activation_aware_factors(w, 4, torch.eye(9))
    pa, pb = lowrank_factors(w, 4)
    assert torch.allclose(a @ b, pa @ pb, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_activation_aware_factors_stay_bounded_on_a_singular_second_moment(threads):
    # Fewer calibration tokens than inputs make the second moment singular. At full rank the
    # directions it leaves without energy must get no factor: dividing their rounding noise by a
    # near-zero singular value gave SmolLM2 a gate_proj factor of 1e26 at one CPU thread, and
    # ||A B|| was up to 2.5 ||W|| here. The projection A B = Wᵀ U Uᵀ can never exceed W.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in range(20):
            g = torch.Generator().manual_seed(seed)
            w = torch.randn(96, 40, generator=g)
            x = torch.randn(12, 40, generator=g)
            x[:, ::3] = 0  # channels the mask keeps active: never in the low-rank path
            a, b, _ = activation_aware_factors(w, 40, x.t() @ x / len(x))
            assert torch.isfinite(a).all() and torch.isfinite(b).all()
            assert torch.linalg.matrix_norm(a @ b, 2) <= 1.001 * torch.linalg.matrix_norm(w, 2)
            # and the inputs it saw are still reproduced
            assert (x @ w.t() - x @ a @ b).norm() <= 1e-4 * (x @ w.t()).norm()
    finally:
        torch.set_num_threads(before)


def test_activation_aware_factors_bad_shapes():
    with pytest.raises(ValueError, match=r"second_moment must be \[6, 6\]"):
        activation_aware_factors(torch.randn(4, 6), 2, torch.eye(5))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 4\]"):
        activation_aware_factors(torch.randn(4, 6), 5, torch.eye(6))


def test_activation_factorization_lowers_output_error_of_a_real_layer(calib):
    # Same budget (rho 0.8), both factorizations: the activation-aware low-rank path must
    # reproduce the dense logits at least as well as the plain SVD.
    errors = {}
    for fact in ("weight", "activation"):
        model = tiny_model("llama3", layers=2)
        dense = model(input_ids=calib[:8]).logits.detach()
        rsparse.sparsify(
            model, 0.5, calibration=calib, rho=0.8, search="none",
            config=RSparseConfig(factorization=fact), show_progress=False,
        )
        rsparse.set_mode(model, "sparse")
        with torch.no_grad():
            errors[fact] = float((model(input_ids=calib[:8]).logits - dense).norm() / dense.norm())
    assert errors["activation"] < errors["weight"]
