"""The calibrate → factorize → install pass over the decoder, one layer (and input group) at a time.

Each group of linears that share an input (q/k/v, then o, then gate/up, then down) is
calibrated on the inputs it really sees, i.e. with every group before it already replaced
by its `RSparseLinear`, then replaced itself. `sparsify` runs this pass once with the final
budgets; the budget search runs it once more beforehand with uniform budgets and keeps what
it learned about every linear (`LinearStats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rsparse.calibrate import (
    ScoreHistogram,
    capture_layer_calls,
    group_inputs,
    inactive_second_moments,
    input_groups,
    run_layer,
    score_histograms,
)
from rsparse.config import LayerBudget, RSparseConfig
from rsparse.factor_quant import fake_quantize_factors
from rsparse.factorize import lowrank_factors, weight_svd_residual, activation_aware_factors
from rsparse.fuse import link_groups
from rsparse.fuse_norm import link_norm_layers
from rsparse.fuse_silu import link_silu_mlps
from rsparse.nn import RSparseLinear, column_norms, decoder_layers, replace_module


@dataclass
class LinearStats:
    """What the uniform pass learned about one linear, for the budget search.

    Args:
        histogram: scores ``|x|·c`` and their energies at the linear's input (upstream sparse).
        group: index of the linear's input group within its decoder layer (0: attention
            input, 1: attention output, 2: MLP input, 3: MLP output on Llama-style blocks).
        depth: the decoder layer's index over ``len(layers) - 1``, in ``[0, 1]``.
        residual: ``residual[r] / residual[0]``: the share of the inactive inputs' output
            energy the low-rank path leaves at rank ``r`` (``[max_rank + 1]``, fp64).
        lowrank_in, lowrank_out: factors up to ``max_rank``, sliced by the search.
    """

    histogram: ScoreHistogram
    group: int
    depth: float
    residual: torch.Tensor
    lowrank_in: torch.Tensor
    lowrank_out: torch.Tensor


def install_layers(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    batches: list[torch.Tensor],
    budgets: dict[str, LayerBudget],
    cfg: RSparseConfig,
    *,
    max_ranks: dict[str, int] | None = None,
    show_progress: bool = True,
    desc: str = "rsparse: calibrate + install",
) -> tuple[dict[str, nn.Linear], dict[str, LinearStats]]:
    """Replace every linear in ``targets`` by an `RSparseLinear` with its budget, in place.

    Args:
        targets: the linears to replace, by qualified name.
        batches: calibration token batches.
        budgets: a `LayerBudget` per name in ``targets``.
        cfg: score rule, factorization and decode settings.
        max_ranks: when given, also collect `LinearStats` per linear with factors up to this rank.

    Returns:
        ``(replaced, stats)``: the original modules by name (for `restore`; already replaced
        ones are restored on failure before the exception propagates) and the statistics
        (empty without ``max_ranks``). The new layers that read the same input are linked for
        fused decode launches (`rsparse.fuse`), once every layer is calibrated.
    """
    stack_name, layers = decoder_layers(model)
    replaced: dict[str, nn.Linear] = {}
    stats: dict[str, LinearStats] = {}
    shared: list[list[str]] = []
    try:
        hidden, calls = capture_layer_calls(model, layers, batches)
        for i, layer in enumerate(tqdm(layers, desc=desc, disable=not show_progress)):
            prefix = f"{stack_name}.{i}."
            linears = {n[len(prefix):]: m for n, m in targets.items() if n.startswith(prefix)}
            for g, group in enumerate(input_groups(layer, linears, hidden[0], calls[i][0])):
                shared.append([prefix + n for n in group])
                modules = {n: linears[n] for n in group}
                weights = {n: _channel_weights(m, cfg.score) for n, m in modules.items()}
                norms = {n: column_norms(m.weight) for n, m in modules.items()} if max_ranks else None
                inputs = group_inputs(layer, modules[group[0]], hidden, calls[i])
                hists = score_histograms(inputs, weights, prefix + group[0], norms)
                taus = {n: hists[n].threshold(budgets[prefix + n].active_fraction) for n in group}
                ranks = {
                    n: max(budgets[prefix + n].r, max_ranks[prefix + n] if max_ranks else 0) for n in group
                }
                moments = {}
                if any(ranks.values()) and (cfg.factorization == "activation" or max_ranks):
                    moments = inactive_second_moments(inputs, weights, {n: taus[n] for n in group if ranks[n]})
                del inputs
                for n in group:
                    name, budget = prefix + n, budgets[prefix + n]
                    lowrank_in, lowrank_out, residual = _factors(
                        modules[n].weight, ranks[n], moments.get(n), cfg.factorization
                    )
                    packed = cfg.factor_bits != 16 and not max_ranks
                    if cfg.factor_bits != 16 and max_ranks:
                        # The search slices these factors for every candidate rank: it scores them as a
                        # packed layer holds them (per-component ranges keep the slices exact).
                        lowrank_in, lowrank_out = fake_quantize_factors(lowrank_in, lowrank_out)
                    new = RSparseLinear.from_linear(
                        modules[n], tau=taus[n], c=weights[n],
                        lowrank_in=lowrank_in[:, : budget.r], lowrank_out=lowrank_out[: budget.r],
                        budget=budget, mode="sparse", decode_cutoff=cfg.decode_cutoff,
                        factor_bits=cfg.factor_bits if packed else 16,
                    )
                    if max_ranks:
                        stats[name] = LinearStats(
                            hists[n], g, i / max(len(layers) - 1, 1), residual, lowrank_in, lowrank_out
                        )
                    replaced[name] = replace_module(model, name, new)
                    _release_weight(modules[n])
            hidden = [run_layer(layer, h, call) for h, call in zip(hidden, calls[i])]
        link_groups(model, shared)
        link_silu_mlps(model)
        link_norm_layers(model)  # after the groups and MLPs it relies on
    except BaseException:
        restore(model, replaced)
        raise
    return replaced, stats


def restore(model: nn.Module, replaced: dict[str, nn.Linear]) -> None:
    """Undo `install_layers`: put every original linear back, its weight rebuilt from the transposed copy."""
    for name, original in replaced.items():
        new = model.get_submodule(name)
        original.weight.data = new.weight_t.detach().t().contiguous()
        replace_module(model, name, original)


def _factors(weight: torch.Tensor, rank: int, second_moment: torch.Tensor | None, factorization: str):
    """Factors up to ``rank`` and the relative residual curve under the inactive inputs' second moment."""
    if rank == 0:
        empty_in, empty_out = lowrank_factors(weight, 0)
        return empty_in, empty_out, torch.ones(1, dtype=torch.float64)
    if factorization == "activation":
        lowrank_in, lowrank_out, residual = activation_aware_factors(weight, rank, second_moment)
    else:
        lowrank_in, lowrank_out = lowrank_factors(weight, rank)
        residual = (
            torch.ones(rank + 1, dtype=torch.float64)  # not needed outside the search
            if second_moment is None
            else weight_svd_residual(weight, second_moment)
        )
    residual = residual[: rank + 1].cpu()
    return lowrank_in, lowrank_out, residual / residual[0].clamp_min(1e-300)


def _channel_weights(linear: nn.Linear, score: str) -> torch.Tensor:
    """``c`` of the score ``|x_j| * c_j``: column norms ("rsparse") or ones ("magnitude")."""
    if score == "magnitude":
        return torch.ones(linear.in_features, dtype=torch.float32, device=linear.weight.device)
    return column_norms(linear.weight)


def _release_weight(linear: nn.Linear) -> None:
    # The RSparseLinear holds the transposed copy; keep the original module (for `restore`)
    # but not its weight, so that peak memory stays at one model plus one layer.
    linear.weight.data = linear.weight.data.new_empty(0)
