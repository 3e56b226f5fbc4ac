"""Per-layer budget search (DESIGN.md §3, search): which ``(s_i, rho_i)`` under a model-level target.

Three steps, each cheap:

1. **Tables.** A pass with uniform budgets (`rsparse.install.install_layers`) records, per
   linear, the score histogram with the energy ``(x_j·||W[:, j]||)²`` of every score, and the
   low-rank residual curve under the inactive inputs' second moment. Together they estimate
   the relative output error of any option ``(density C, sparse share rho)``:
   ``dropped_energy(rho·C) · residual(r)`` with ``r`` the rank the rest of the budget buys.
2. **Allocation.** Each relative error is priced by ``w_i``, what an output error of that
   linear costs in KL divergence to second order: its Fisher-weighted output energy, from one
   backward pass of the dense model over held-out tokens (`output_sensitivities`).
   Minimise ``Σ_i w_i · error_i`` subject to the weight-count-weighted density
   being ``1 - target``: one Lagrange multiplier, bisected, picks every layer's option; the
   few layers whose option flips at the final multiplier are interpolated to meet the target
   exactly.
3. **Refinement.** The weights ``w_i`` are where the tables cannot know the model: how an
   output error in an attention projection compares with one in the MLP, or early layers
   with late ones. A handful of knobs (one log-weight per input group of a block, a depth
   slope, a trust factor on the low-rank gain) are tuned by coordinate descent on the KL
   divergence of next-token distributions against the dense model, measured end to end on
   held-out calibration tokens. Every candidate allocation costs one forward pass; uniform
   budgets are scored too, so the result is never worse than uniform on that objective.

With ``score="auto"`` (the default) step 1 runs twice, once under the column-norm score
``|x_j|·||W[:, j]||`` and once under plain magnitude ``|x_j|``; each rule's table allocation is
scored end to end and the refinement goes on with the better rule (one evaluation of the budget
and one calibration pass more). On SmolLM2-135M plain magnitude beat the column-norm score under
the search at targets 0.5 and 0.6 and lost at 0.4 (benchmarks/NOTES.md, budget search notes), while the
tables' error proxy always prefers the column norms: only the end-to-end KL can tell.

The search is deterministic: no random numbers are drawn.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rsparse import install
from rsparse.budget import layer_budget, model_sparsity, rank_for, uniform_budgets
from rsparse.config import LayerBudget, RSparseConfig
from rsparse.install import LinearStats, install_layers, restore
from rsparse.nn import rsparse_modules

logger = logging.getLogger(__name__)

#: Sparse shares the search may give a layer when ``rho`` is left to it.
RHOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
#: The same with 4-bit factors, down to 0.5: there a rank costs a quarter as much, and on SmolLM2 the lower
#: grid gave 1-11 % lower held-out perplexity at targets 0.4-0.6 (with bf16 factors it was 3 % worse;
#: benchmarks/NOTES.md, "Twenty-ninth session").
RHOS_PACKED_FACTORS = RHOS + (0.65, 0.6, 0.55, 0.5)
#: Density step of the allocation grid (the final interpolation makes densities continuous).
DENSITY_STEP = 0.01
#: Step sizes, in log-weight units, of the coordinate descent.
STEPS = (1.0, 0.5, 0.25)


@dataclass
class SearchResult:
    """The budgets `search_budgets` chose and how they scored.

    Args:
        budgets: a `LayerBudget` per linear.
        kl: KL divergence (nats per token) against the dense model on held-out tokens.
        uniform_kl: the same for uniform budgets at the target.
        evaluations: end-to-end evaluations spent.
        knobs: the error weights of the chosen allocation.
        seconds_tables: time of the uniform passes that build the tables.
        seconds_evaluations: time of the refinement (the end-to-end evaluations).
        score: the channel score rule the budgets are for (with ``score="auto"``, the one chosen).
        score_kl: with ``score="auto"``, each rule's KL at its table allocation (what chose it).
    """

    budgets: dict[str, LayerBudget]
    kl: float
    uniform_kl: float
    evaluations: int
    knobs: dict[str, float]
    seconds_tables: float = 0.0
    seconds_evaluations: float = 0.0
    score: str = "rsparse"
    score_kl: dict[str, float] | None = None


def split_holdout(batches: list[torch.Tensor], fraction: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split calibration batches by sequence: the last ``fraction`` of sequences (at least one) are held out."""
    rows = sum(b.shape[0] for b in batches)
    if rows < 2:
        raise ValueError(
            f"the budget search needs at least 2 calibration sequences (one to fit thresholds, one held out "
            f"to score budgets), got {rows}; give more calibration data or use search='none'"
        )
    held = min(max(1, round(rows * fraction)), rows - 1)
    fit, heldout, seen = [], [], 0
    for b in batches:
        keep = max(0, min(b.shape[0], rows - held - seen))
        if keep:
            fit.append(b[:keep])
        if keep < b.shape[0]:
            heldout.append(b[keep:])
        seen += b.shape[0]
    return fit, heldout


@torch.no_grad()
def search_budgets(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    batches: list[torch.Tensor],
    cfg: RSparseConfig,
    *,
    show_progress: bool = True,
) -> SearchResult:
    """Choose per-layer budgets at model-level sparsity ``cfg.target`` (see the module docstring).

    The model is dense on entry and on return (the uniform pass is undone).

    Args:
        model: the dense causal LM.
        targets: the linears to budget, by qualified name.
        batches: calibration token batches; ``cfg.search_holdout`` of the sequences score budgets.
        cfg: target, score rule, ``rho`` (``None``: searched), bounds and search budget.
    """
    fit, heldout = split_holdout(batches, cfg.search_holdout)
    shapes = {name: (m.in_features, m.out_features) for name, m in targets.items()}
    grid = RHOS if cfg.factor_bits == 16 else RHOS_PACKED_FACTORS
    rhos = grid if cfg.rho is None else (float(cfg.rho),)
    max_density = 1.0 - cfg.min_layer_sparsity
    max_ranks = {name: rank_for(n, m, max_density, min(rhos), cfg.factor_bits) for name, (n, m) in shapes.items()}
    uniform = uniform_budgets(shapes, cfg.target, 1.0 if cfg.rho is None else cfg.rho, cfg.factor_bits)

    started = time.perf_counter()
    dense_logprobs, sensitivity = output_sensitivities(model, targets, heldout, seed=cfg.seed)
    # "auto" compares the rules only when the evaluation budget leaves the refinement room after it.
    if cfg.score != "auto":
        scores = (cfg.score,)
    elif cfg.search_evaluations > len(SCORE_CHOICES):
        scores = SCORE_CHOICES
    else:  # too few evaluations to compare the rules and still refine: the default rule
        scores = ("rsparse",)
    # One uniform pass per score rule. The model keeps the last pass's layers; the evaluator
    # gives each layer the c, threshold and factors of whichever rule it scores.
    passes: dict[str, dict[str, LinearStats]] = {}
    replaced: dict[str, nn.Linear] = {}
    try:
        for score in scores:
            restore(model, replaced)
            replaced = {}
            desc = "rsparse: search tables" + (f" ({score} score)" if len(scores) > 1 else "")
            replaced, passes[score] = install_layers(
                model, targets, fit, uniform, dataclasses.replace(cfg, score=score), max_ranks=max_ranks,
                show_progress=show_progress, desc=desc,
            )
        modules = rsparse_modules(model)
        tables = {score: _Tables(stats, shapes, rhos, cfg, sensitivity) for score, stats in passes.items()}
        evaluators = {  # one rule: the installed c stays (bit for bit what the final install builds)
            score: _Evaluator(model, modules, stats, heldout, dense_logprobs,
                              _score_weights(modules, score) if len(scores) > 1 else None)
            for score, stats in passes.items()
        }
        seconds_tables = time.perf_counter() - started
        logger.info("rsparse search: tables of %d linears in %.1fs", len(modules), seconds_tables)
        known, score_kl = {}, None
        if len(scores) > 1:  # each rule's table allocation, end to end; the refinement goes on with the better
            score_kl, table_budgets = {}, {}
            for score in scores:
                table_budgets[score] = _budgets_of(tables[score], tables[score].allocate({}, cfg.target))
                score_kl[score] = evaluators[score](table_budgets[score])
            chosen = min(scores, key=lambda k: score_kl[k])  # ties: the first (column norms)
            known = {_key(table_budgets[chosen]): score_kl[chosen]}
            logger.info("rsparse search: KL at the table allocation %s; going on with %s", score_kl, chosen)
        else:
            chosen = scores[0]
        spent = len(scores) - 1  # the other rules' table allocations (the chosen one's is `known`)
        result = _refine(tables[chosen], evaluators[chosen], uniform, cfg, show_progress, known=known, spent=spent)
        result.evaluations += spent
        result.score, result.score_kl = chosen, score_kl
        result.seconds_tables = seconds_tables
        result.seconds_evaluations = time.perf_counter() - started - seconds_tables
        return result
    finally:
        restore(model, replaced)


#: The score rules ``score="auto"`` chooses between.
SCORE_CHOICES = ("rsparse", "magnitude")


def _score_weights(modules: dict[str, nn.Module], score: str) -> dict[str, torch.Tensor]:
    """``c`` of every layer under ``score``, built by `rsparse.install` itself."""
    return {name: install._channel_weights(m, score).to(m.c.dtype) for name, m in modules.items()}


def _budgets_of(tables: "_Tables", allocation: dict[str, tuple[float, float]]) -> dict[str, LayerBudget]:
    return {k: layer_budget(*tables.shapes[k], s, rho, tables.factor_bits) for k, (s, rho) in allocation.items()}


def _key(budgets: dict[str, LayerBudget]) -> tuple:
    return tuple((round(b.s, 6), round(b.rho, 6)) for b in budgets.values())


class _Tables:
    """Estimated relative error and bytes of every option of every linear, as ``[linears, options]``."""

    def __init__(
        self, stats: dict[str, LinearStats], shapes, rhos, cfg: RSparseConfig, sensitivity: dict[str, float] | None = None
    ) -> None:
        self.names = list(stats)
        sensitivity = sensitivity or {}
        self.sensitivity = torch.tensor([sensitivity.get(k, 1.0) for k in self.names], dtype=torch.float64)
        self.shapes = shapes
        self.factor_bits = cfg.factor_bits
        self.bounds = (1.0 - cfg.max_layer_sparsity, 1.0 - cfg.min_layer_sparsity)
        lo, hi = self.bounds
        steps = max(1, round((hi - lo) / DENSITY_STEP))
        densities = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
        self.density = densities.repeat_interleave(len(rhos))  # option o: (density, rho)
        self.rho = torch.tensor(rhos, dtype=torch.float64).repeat(len(densities))
        self.size = torch.tensor([n * m for n, m in (shapes[k] for k in self.names)], dtype=torch.float64)
        self.group = [stats[k].group for k in self.names]
        self.depth = torch.tensor([stats[k].depth for k in self.names], dtype=torch.float64)
        dropped, rank_left = [], []
        for k in self.names:
            n, m = shapes[k]
            dropped.append(stats[k].histogram.dropped_energy_curve(self.rho * self.density))
            ranks = torch.tensor([rank_for(n, m, d, p, cfg.factor_bits) for d, p in zip(self.density.tolist(), self.rho.tolist())])
            residual = stats[k].residual
            rank_left.append(residual[ranks.clamp(max=len(residual) - 1)])
        self.dropped = torch.stack(dropped)  # [L, O]
        self.rank_left = torch.stack(rank_left).clamp_min(1e-12)

    def allocate(self, knobs: dict[str, float], target: float) -> dict[str, tuple[float, float]]:
        """``{name: (s, rho)}`` minimising the weighted error at model-level sparsity ``target``."""
        groups = torch.tensor([knobs.get(f"group{g}", 0.0) for g in self.group], dtype=torch.float64)
        # "sensitivity" trusts the Fisher weights more (> 0) or less (< 0, down to ignoring them at -1).
        trust = 1.0 + knobs.get("sensitivity", 0.0)
        weight = self.sensitivity**trust * torch.exp(groups + knobs.get("depth", 0.0) * (self.depth - 0.5))
        error = weight[:, None] * self.dropped * self.rank_left ** math.exp(knobs.get("rank", 0.0))
        bytes_ = self.size[:, None] * self.density[None, :] / self.size.sum()
        wanted = 1.0 - target

        def choose(lam: float) -> torch.Tensor:
            return torch.argmin(error + lam * bytes_, dim=1)

        def density_of(choice: torch.Tensor) -> float:
            return float((self.density[choice] * self.size).sum() / self.size.sum())

        lo, hi = -30.0, 30.0  # log10 of the multiplier: low = dense, high = sparse
        for _ in range(80):
            mid = (lo + hi) / 2
            if density_of(choose(10.0**mid)) >= wanted:
                lo = mid
            else:
                hi = mid
        # The two sides of the bisection differ in a few marginal layers only; moving those
        # linearly between their two options meets the target exactly.
        above, below = choose(10.0**lo), choose(10.0**hi)
        d_above, d_below = density_of(above), density_of(below)
        t = 0.0 if d_above <= d_below else min(max((wanted - d_below) / (d_above - d_below), 0.0), 1.0)
        density = self.density[below] + t * (self.density[above] - self.density[below])
        return {
            k: (float(1.0 - d), float(self.rho[o])) for k, d, o in zip(self.names, density, above.tolist())
        }


class _Evaluator:
    """Installs an allocation into the uniform-pass model (thresholds from the histograms, factors
    sliced) and scores it: mean KL(dense ‖ sparse) per held-out token, every token sparse."""

    def __init__(self, model, modules, stats, heldout, dense_logprobs, weights=None) -> None:
        self.model, self.modules, self.stats = model, modules, stats
        self.heldout, self.dense = heldout, dense_logprobs
        self.weights = weights  # each layer's c under this evaluator's score rule (None: as installed)

    def install(self, budgets: dict[str, LayerBudget]) -> None:
        """Give every layer its budget's threshold and factor slices, every token sparse."""
        for name, budget in budgets.items():
            module, st = self.modules[name], self.stats[name]
            if self.weights is not None:
                module.c.copy_(self.weights[name])
            module.tau.fill_(st.histogram.threshold(budget.active_fraction))
            module.lowrank_in = st.lowrank_in[:, : budget.r]
            module.lowrank_out = st.lowrank_out[: budget.r]
            module.budget = budget
            module.set_mode("sparse")

    def __call__(self, budgets: dict[str, LayerBudget]) -> float:
        self.install(budgets)
        total, count = 0.0, 0
        for batch, dense in zip(self.heldout, self.dense):
            sparse = _logprobs(self.model, batch)
            total += float((dense.exp() * (dense - sparse)).sum())
            count += dense.shape[0] * dense.shape[1]
        return total / count


def output_sensitivities(
    model: nn.Module, targets: dict[str, nn.Linear], batches: list[torch.Tensor], *, seed: int
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Dense next-token log-probabilities, and how much each linear's output error costs in KL.

    To second order, the KL divergence caused by an output error ``δy`` of a linear is
    ``½ E[(gᵀ δy)²]`` with ``g`` the gradient of the log-likelihood of a token sampled from the
    dense model's own distribution (the Fisher information). Taking the error as isotropic with
    energy ``e·||y||²`` (``e``: the relative error the tables estimate) gives the weight
    ``Σ_t ||g_t||² ||y_t||² / out_features``: one backward pass over the held-out tokens for all
    linears, with gradients of activations only (no weight gradients are formed).

    Returns:
        ``(logprobs, sensitivity)``: fp32 log-probabilities per batch, and a weight per linear.
    """
    sums = {name: torch.zeros((), dtype=torch.float64) for name in targets}

    def track(name: str, out_features: int):
        def hook(module, args, out):
            if out.requires_grad:
                energy = out.detach().float().square().sum(-1)

                def on_grad(grad):
                    sums[name] += float((grad.float().square().sum(-1) * energy).sum()) / out_features

                out.register_hook(on_grad)

        return hook

    def needs_grad(module, args, out):
        return out.requires_grad_()

    params = [p for p in model.parameters() if p.requires_grad]
    handles = [m.register_forward_hook(track(n, m.out_features)) for n, m in targets.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(needs_grad))
    generator = torch.Generator(device=batches[0].device).manual_seed(seed)
    logprobs = []
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for batch in batches:
                lp = model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
                logprobs.append(lp.detach())
                if not torch.isfinite(lp).all():
                    continue  # the calibration pass names the layer where NaN or inf appear
                sampled = torch.multinomial(lp.detach().exp().flatten(0, 1), 1, generator=generator)
                nll = -lp.flatten(0, 1).gather(1, sampled).sum()
                nll.backward()
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)
    return logprobs, {name: float(v) for name, v in sums.items()}


def _logprobs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)


def _refine(
    tables: _Tables,
    evaluate: Callable[[dict[str, LayerBudget]], float],
    uniform: dict[str, LayerBudget],
    cfg: RSparseConfig,
    show_progress: bool,
    known: dict[tuple, float] | None = None,
    spent: int = 0,
) -> SearchResult:
    """Coordinate descent over the knobs, each candidate allocation scored end to end
    (``known``: allocations already scored, by `_key`; ``spent``: evaluations already used
    of ``cfg.search_evaluations``)."""
    started = time.perf_counter()
    knob_names = (
        ["sensitivity"] + sorted({f"group{g}" for g in tables.group}) + ["depth"] + (["rank"] if cfg.rho is None else [])
    )
    budget_limit = cfg.search_evaluations - spent
    seen: dict[tuple, float] = {}
    known = dict(known or {})
    bar = tqdm(total=budget_limit, desc="rsparse: search", disable=not show_progress)

    def budgets_of(allocation: dict[str, tuple[float, float]]) -> dict[str, LayerBudget]:
        return _budgets_of(tables, allocation)

    def score(budgets: dict[str, LayerBudget]) -> float | None:
        key = _key(budgets)
        if key in seen:
            return seen[key]
        out_of_time = cfg.search_time_limit is not None and time.perf_counter() - started > cfg.search_time_limit
        if len(seen) >= budget_limit or out_of_time:
            return None
        seen[key] = known.pop(key) if key in known else evaluate(budgets)
        bar.update(1)
        return seen[key]

    def finish() -> SearchResult:
        return _finish(best_budgets, best_kl, uniform_kl, len(seen), best_knobs, time.perf_counter() - started)

    try:
        uniform_kl = score(uniform)
        best_knobs = {k: 0.0 for k in knob_names}
        best_budgets = budgets_of(tables.allocate(best_knobs, cfg.target))
        best_kl = score(best_budgets)
        if best_kl is None or best_kl > uniform_kl:
            best_budgets, best_kl, best_knobs = dict(uniform), uniform_kl, {k: 0.0 for k in knob_names}
            best_knobs["uniform"] = 1.0
        bar.set_postfix(best_kl=f"{best_kl:.4f}", uniform_kl=f"{uniform_kl:.4f}")
        base = {k: 0.0 for k in knob_names}  # the descent starts from the table allocation
        base_kl = score(budgets_of(tables.allocate(base, cfg.target)))  # already scored: no evaluation
        for step in STEPS:
            improved = True
            while improved:
                improved = False
                for name in knob_names:
                    for sign in (1.0, -1.0):
                        trial = dict(base, **{name: base[name] + sign * step})
                        budgets = budgets_of(tables.allocate(trial, cfg.target))
                        kl = score(budgets)
                        if kl is None:
                            return finish()
                        if base_kl is None or kl < base_kl:
                            base, base_kl, improved = trial, kl, True
                            if kl < best_kl:
                                best_budgets, best_kl, best_knobs = budgets, kl, dict(trial)
                                bar.set_postfix(best_kl=f"{best_kl:.4f}", uniform_kl=f"{uniform_kl:.4f}")
                            break
        return finish()
    finally:
        bar.close()


def _finish(budgets, kl, uniform_kl, evaluations, knobs, seconds) -> SearchResult:
    # The seconds come from the caller: a disabled progress bar reports no elapsed time.
    logger.info(
        "rsparse search: KL %.4f (uniform %.4f) after %d evaluations (%.1fs), model sparsity %.4f, knobs %s",
        kl, uniform_kl, evaluations, seconds, model_sparsity(budgets.values()),
        {k: round(v, 2) for k, v in knobs.items()},
    )
    return SearchResult(dict(budgets), kl, uniform_kl, evaluations, knobs)
