"""Calibration data and activation statistics (DESIGN.md §3, calibrate).

Thresholds are fitted decoder layer by decoder layer on the inputs each linear really
sees at inference, i.e. with every linear before it already sparse.  To do that without
re-running the model from the start for every layer, the inputs of decoder layer 0 and
the extra arguments of every decoder layer (masks, rotary embeddings ...) are captured
once; each layer is then run on its cached inputs, and its outputs become the next
layer's inputs (the layer-by-layer scheme of GPTQ-style calibrators).

Statistics are streaming histograms of the score ``|x_j| * c_j`` per linear, so their
memory does not grow with the number of calibration tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Fewer calibration tokens than this cannot place a threshold meaningfully.
MIN_CALIBRATION_TOKENS = 64


class StopForward(Exception):
    """Raised from a hook once it has what it needs, to skip the rest of a forward pass."""


# --------------------------------------------------------------------------- data sources


def calibration_batches(
    model: nn.Module,
    calibration: Any,
    tokenizer: Any,
    *,
    samples: int,
    seq_len: int,
    batch_size: int,
    seed: int,
) -> tuple[list[torch.Tensor], str]:
    """Turn the user's calibration argument into batches of token ids on the model's device.

    Args:
        model: the causal LM (its vocabulary size bounds the token ids).
        calibration: ``None`` (text sampled from the model itself), a list of strings (needs
            ``tokenizer``), a ``LongTensor`` ``[n, seq]`` of token ids, or an iterable of such
            tensors.
        tokenizer: a Hugging Face tokenizer, needed for strings.
        samples, seq_len: sequences and tokens per sequence for self-generated or text data.
        batch_size: sequences per batch.
        seed: seed of self-generation.

    Returns:
        ``(batches, source)`` where ``source`` names where the data came from.
    """
    vocab = model.get_input_embeddings().num_embeddings
    device = model.get_input_embeddings().weight.device
    if calibration is None:
        # Generation is step-bound: one wide batch is much faster than several narrow ones.
        tokens = self_generated_tokens(model, samples, seq_len, seed=seed, batch_size=max(batch_size, 32))
        batches, source = list(tokens.split(batch_size)), "self-generated"
    elif isinstance(calibration, str):
        raise ValueError("calibration must be a list of strings, not a single string; wrap it in a list")
    elif isinstance(calibration, torch.Tensor):
        batches, source = list(_check_tokens(calibration, vocab, "calibration").split(batch_size)), "tokens"
    else:
        items = list(calibration)
        if not items:
            raise ValueError("calibration data is empty: give texts, token ids, or None to self-generate")
        if all(isinstance(t, str) for t in items):
            batches, source = _text_batches(items, tokenizer, samples, seq_len, batch_size, vocab), "text"
        elif all(isinstance(t, torch.Tensor) for t in items):
            batches = [_check_tokens(t, vocab, f"calibration batch {i}") for i, t in enumerate(items)]
            source = "tokens"
        else:
            kinds = sorted({type(t).__name__ for t in items})
            raise ValueError(
                f"calibration must be None, a list of strings, a LongTensor [n, seq] or an iterable "
                f"of LongTensors, got an iterable of {kinds}"
            )
    total = sum(b.numel() for b in batches)
    if total < MIN_CALIBRATION_TOKENS:
        raise ValueError(
            f"calibration data is too short: {total} tokens, need at least {MIN_CALIBRATION_TOKENS}"
        )
    return [b.to(device) for b in batches], source


def _check_tokens(tokens: torch.Tensor, vocab: int, what: str) -> torch.Tensor:
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"{what} must be a non-empty [n, seq] tensor of token ids, got shape {tuple(tokens.shape)}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"{what} holds token ids in [{low}, {high}], the model's vocabulary is [0, {vocab})")
    return tokens.long()


def _text_batches(texts, tokenizer, samples, seq_len, batch_size, vocab) -> list[torch.Tensor]:
    """Concatenate the texts (separated by EOS) and cut them into ``seq_len`` blocks."""
    if tokenizer is None:
        raise ValueError("calibration is a list of strings but no tokenizer was given: pass tokenizer=...")
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
        if len(ids) >= samples * seq_len:
            break
    n_blocks = min(samples, len(ids) // seq_len)
    if n_blocks == 0:  # shorter than one block: use what there is as one sequence
        blocks = torch.tensor([ids], dtype=torch.long)
    else:
        blocks = torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    return list(_check_tokens(blocks, vocab, "tokenized calibration text").split(batch_size))


@torch.no_grad()
def self_generated_tokens(
    model: nn.Module, samples: int, seq_len: int, *, seed: int, batch_size: int = 8
) -> torch.Tensor:
    """Sample ``samples`` sequences of ``seq_len`` tokens from the model itself (offline default).

    Every sequence starts from the BOS token (a random token where the model has none) and
    continues by nucleus sampling (top-p 0.95); EOS is suppressed so every sequence has the
    full length. Seeded: the same model and seed give the same tokens.
    """
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().num_embeddings
    bos = getattr(model.config, "bos_token_id", None)
    devices = [device] if device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            if isinstance(bos, int) and 0 <= bos < vocab:
                first = torch.full((n, 1), bos, dtype=torch.long, device=device)
            else:
                first = torch.randint(0, vocab, (n, 1), device=device)
            seqs = model.generate(
                first,
                attention_mask=torch.ones_like(first),
                do_sample=True,
                top_p=0.95,
                top_k=0,
                temperature=1.0,
                max_new_tokens=seq_len - 1,
                min_new_tokens=seq_len - 1,
                pad_token_id=0,
            )
            out.append(seqs[:, :seq_len])
    return torch.cat(out)


# --------------------------------------------------------------------------- layer-wise running


@dataclass
class LayerCall:
    """The arguments a decoder layer received besides its hidden states."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def capture_layer_calls(
    model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """Capture the hidden states entering layer 0 and the extra arguments of every layer, per batch.

    Most architectures hand every layer the very same extra arguments (one mask, one
    rotary table); a probe on one sequence checks that, and then only the embeddings run
    per batch. Architectures whose layers differ (Gemma's sliding and global layers) get
    a full pass per batch.

    Returns:
        ``(hidden, calls)``: the hidden states entering layer 0, one tensor per batch, and
        ``calls[i][b]``, the other arguments layer ``i`` received for batch ``b``.
    """
    probe = _record_calls(model, layers, [batches[0][:1]], stop_after=len(layers) - 1)[1]
    shared = all(_same_call(probe[0][0], calls[0]) for calls in probe[1:])
    hidden, calls = _record_calls(model, layers, batches, stop_after=0 if shared else len(layers) - 1)
    if shared:
        calls = [calls[0]] * len(layers)
    return hidden, calls


def _same_call(a: LayerCall, b: LayerCall) -> bool:
    return (
        len(a.args) == len(b.args)
        and all(x is y for x, y in zip(a.args, b.args))
        and a.kwargs.keys() == b.kwargs.keys()
        and all(a.kwargs[k] is b.kwargs[k] for k in a.kwargs)
    )


def _record_calls(model, layers, batches, stop_after: int):
    """Run the model per batch, recording the arguments of layers ``0..stop_after``, then stop."""
    hidden: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = [[] for _ in range(stop_after + 1)]

    def make_hook(i):
        def hook(module, args, kwargs):
            if args:
                h, rest = args[0], tuple(args[1:])
            else:
                kwargs = dict(kwargs)
                h, rest = kwargs.pop("hidden_states"), ()
            calls[i].append(LayerCall(rest, dict(kwargs)))
            if i == 0:
                hidden.append(h.detach())
            if i == stop_after:  # what follows is not needed: skip the remaining layers and the head
                raise StopForward

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers[: stop_after + 1])
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch, use_cache=False)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return hidden, calls


def run_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """Run one decoder layer on cached inputs; returns its output hidden states."""
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def input_groups(
    layer: nn.Module, linears: dict[str, nn.Module], hidden: torch.Tensor, call: LayerCall
) -> list[list[str]]:
    """Group the layer's linears by shared input, in execution order.

    Linears that receive the very same tensor (q/k/v, gate/up) form one group; a group
    can be calibrated once every group before it is sparse. Linears the layer never
    calls are left out.
    """
    order: list[tuple[str, torch.Tensor]] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: order.append((name, args[0])))
        for name, m in linears.items()
    ]
    try:
        with torch.no_grad():
            run_layer(layer, hidden, call)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    inputs: list[torch.Tensor] = []
    for name, x in order:
        for group, seen in zip(groups, inputs):
            if x is seen:
                if name not in group:
                    group.append(name)
                break
        else:
            groups.append([name])
            inputs.append(x)
    return groups


# --------------------------------------------------------------------------- score statistics


class ScoreHistogram:
    """Streaming histogram of scores on a log2 scale, for quantiles in bounded memory.

    Bins are 1/64 octave wide (a 1.1% relative step, refined by interpolation) from
    2^-48 to 2^40; smaller scores (and exact zeros) share an underflow bin.
    """

    LOW, HIGH, PER_OCTAVE = -48, 40, 64
    BINS = (HIGH - LOW) * PER_OCTAVE

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(self.BINS + 1, dtype=torch.int64, device=device)
        # Per bin, the sum of ``(x_j * ||W[:, j]||)^2`` over the scores that fell in it: the
        # diagonal estimate of the output energy a threshold drops (see `dropped_energy`).
        self.energy = torch.zeros(self.BINS + 1, dtype=torch.float64, device=device)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, scores: torch.Tensor, energy: torch.Tensor | None = None) -> None:
        """Count ``scores``; ``energy`` (same shape) is summed per bin when given."""
        pos = (torch.log2(scores.float().flatten()) - self.LOW) * self.PER_OCTAVE
        # -inf (zeros) and anything below 2^LOW land in bin 0; the top bin absorbs overflow.
        idx = pos.nan_to_num(nan=-1.0, neginf=-1.0).floor().clamp(-1, self.BINS - 1).long() + 1
        self.counts += torch.bincount(idx, minlength=self.BINS + 1)
        if energy is not None:
            self.energy += torch.bincount(idx, weights=energy.double().flatten(), minlength=self.BINS + 1)

    def dropped_energy_curve(self, active_fractions: torch.Tensor) -> torch.Tensor:
        """Share of the total energy held by the scores below the threshold of each active fraction.

        The energy of input channel ``j`` is ``(x_j * ||W[:, j]||)^2``, so this is the diagonal
        estimate (cross-channel terms left out) of ``||W (x ⊙ (1 - m))||^2 / ||W x||^2``: the
        relative output error of the sparse path alone. Linear within a bin, like `threshold`.
        """
        counts, energy = self.counts.double().cpu().flip(0), self.energy.cpu().flip(0)  # high scores first
        kept_count = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        kept_energy = torch.cat([energy.new_zeros(1), energy.cumsum(0)])
        total = float(kept_energy[-1])
        if total <= 0:
            return torch.zeros_like(active_fractions, dtype=torch.float64)
        wanted = active_fractions.double().clamp(0, 1) * float(kept_count[-1])
        b = torch.searchsorted(kept_count, wanted, right=False).clamp(1, len(kept_count) - 1)
        lo, hi = kept_count[b - 1], kept_count[b]
        share = ((wanted - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        kept = kept_energy[b - 1] + share * (kept_energy[b] - kept_energy[b - 1])
        return (1.0 - kept / total).clamp_min(0.0)

    def threshold(self, active_fraction: float) -> float:
        """The ``tau`` such that a fraction ``active_fraction`` of the scores lies above it."""
        if active_fraction >= 1.0:
            return -1.0  # every score (>= 0) is above
        total = self.total
        if total == 0:
            raise ValueError("no scores were collected")
        if active_fraction <= 0.0:
            return math.inf
        counts = self.counts.double().cpu()
        above = counts.flip(0).cumsum(0).flip(0) - counts  # scores in bins strictly above each bin
        wanted = active_fraction * total
        b = int(torch.nonzero(above < wanted).min())  # lowest bin whose upper part still lacks scores
        if b == 0:
            return 0.0  # the rest are zeros/underflow: keep every non-zero score
        inside = (wanted - float(above[b])) / float(counts[b])  # share of bin b to keep
        upper = self.LOW + b / self.PER_OCTAVE  # bin b spans [upper - 1/PER_OCTAVE, upper) in log2
        return float(2.0 ** (upper - min(inside, 1.0) / self.PER_OCTAVE))


def group_inputs(
    layer: nn.Module, first: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall]
) -> list[torch.Tensor]:
    """The input of ``first`` (a linear of ``layer``) for every cached batch, as ``[tokens, in]``.

    The forward of each batch stops as soon as that input has been seen. Kept for one group
    of one layer at a time, so memory stays at one layer's activations.
    """
    inputs: list[torch.Tensor] = []

    def hook(module, args):
        x = args[0].detach()
        inputs.append(x.reshape(-1, x.shape[-1]))
        raise StopForward

    handle = first.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for h, call in zip(hidden, calls):
                try:
                    run_layer(layer, h, call)
                except StopForward:
                    pass
    finally:
        handle.remove()
    return inputs


def score_histograms(
    inputs: list[torch.Tensor],
    channel_weights: dict[str, torch.Tensor],
    where: str = "",
    column_norms: dict[str, torch.Tensor] | None = None,
) -> dict[str, ScoreHistogram]:
    """Histograms of ``|x| * c`` over a group's (shared) inputs, one per linear in ``channel_weights``.

    Non-finite inputs raise `ValueError` naming ``where`` (the first linear of the group).
    With ``column_norms`` (``||W[:, j]||`` per linear) the histograms also sum the energy
    ``(x_j * ||W[:, j]||)^2`` per bin, which the budget search uses.
    """
    hists = {name: ScoreHistogram(inputs[0].device) for name in channel_weights}
    for x in inputs:
        x = x.abs().float()
        if not torch.isfinite(x).all():
            raise ValueError(
                f"calibration activations at the input of {where} hold NaN or inf; "
                f"check the model's dtype (fp16 overflow?) and the calibration data"
            )
        for name, c in channel_weights.items():
            energy = None if column_norms is None else (x * column_norms[name]).square()
            hists[name].add(x * c, energy)
    return hists


def inactive_second_moments(
    inputs: list[torch.Tensor], channel_weights: dict[str, torch.Tensor], taus: dict[str, float]
) -> dict[str, torch.Tensor]:
    """``E[x̄ x̄ᵀ]`` (fp64, ``[in, in]``) of the inactive part ``x̄ = x ⊙ (|x|·c <= tau)`` per linear.

    This is what the low-rank path multiplies at inference;
    `rsparse.factorize.activation_aware_factors` fits the factors to it. The mask is built as
    `rsparse.ops.active_mask` builds it.
    """
    from rsparse.ops import active_mask

    n = inputs[0].shape[-1]
    moments = {name: torch.zeros(n, n, dtype=torch.float64, device=inputs[0].device) for name in taus}
    count = sum(x.shape[0] for x in inputs)
    for x in inputs:
        for name in taus:
            tau = torch.tensor(taus[name], dtype=torch.float32, device=x.device)
            inactive = torch.where(active_mask(x, channel_weights[name], tau), 0.0, x.float())
            moments[name] += (inactive.t() @ inactive).double()
    return {name: m / max(count, 1) for name, m in moments.items()}
