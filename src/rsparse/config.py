"""Versioned, serialisable settings of a sparsified model.

`RSparseConfig` holds what the user asked for (target, score rule, calibration
settings ...) and, once `sparsify` has run, the budget chosen for every layer
(`LayerBudget`).  Both round-trip through plain dicts so that they can live in a
model's ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Version of the on-disk format of `RSparseConfig`; bump when a field changes meaning.
FORMAT_VERSION = 3  # 2: search settings and factorization; 3: factor_bits

SCORES = ("auto", "rsparse", "magnitude")
MODES = ("auto", "sparse", "dense")
SEARCHES = ("auto", "none")
FACTORIZATIONS = ("activation", "weight")
FACTOR_BITS = (16, 4)  # rsparse.factor_quant


def _library_version() -> str:
    from rsparse import __version__

    return __version__


def _from_dict(cls, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys are {valid}")
    return cls(**data)


@dataclass
class LayerBudget:
    """Budget of one sparsified linear layer (see DESIGN.md §2).

    Args:
        in_features (`int`): input channels ``n`` of the layer.
        out_features (`int`): output channels ``m`` of the layer.
        s (`float`): sparsity of the layer; the density is ``1 - s``.
        rho (`float`): share of the budget spent on the sparse (channel) path.
        k (`float`): expected number of active input channels per token, ``rho * (1 - s) * n``.
        r (`int`): rank of the low-rank path, ``floor((1 - rho) * (1 - s) * m * n / ((m + n) * f))``,
            ``f = factor_bits / 16`` the bytes of a factor value relative to a 16-bit weight value.
        factor_bits (`int`, defaults to 16): bits per stored factor value, 16 (the weight's dtype) or 4
            (`rsparse.factor_quant`).

    Example:

    ```python
    >>> from rsparse.budget import layer_budget
    >>> b = layer_budget(4096, 14336, s=0.5, rho=0.8)
    >>> b.r, b.active_fraction
    (318, 0.4)
    ```
    """

    in_features: int
    out_features: int
    s: float
    rho: float
    k: float
    r: int
    factor_bits: int = 16

    @property
    def density(self) -> float:
        """Fraction of the dense weight bytes the layer streams per decode token."""
        return 1.0 - self.s

    @property
    def active_fraction(self) -> float:
        """Expected fraction of input channels kept per token, ``k / n``."""
        return self.k / self.in_features

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerBudget":
        return _from_dict(cls, data)


@dataclass
class RSparseConfig:
    """Settings of `rsparse.sparsify` and, after it ran, the per-layer budgets it chose.

    Example:

    ```python
    >>> import rsparse
    >>> cfg = rsparse.RSparseConfig(target=0.7, calibration_samples=64)
    >>> rsparse.RSparseConfig.from_dict(cfg.to_dict()) == cfg
    True
    ```
    """

    target: float = field(default=0.5, metadata={"help": "model-level sparsity in [0, 1)"})
    rho: float | None = field(
        default=None,
        metadata={"help": "sparse-path share of every layer's budget; None lets the search decide"},
    )
    score: str = field(
        default="auto",
        metadata={
            "help": f"channel score rule, one of {SCORES}; 'auto' lets the search choose between the "
            f"column-norm score and plain magnitude (sparsify records the one used)"
        },
    )
    search: str = field(
        default="auto",
        metadata={"help": f"per-layer budget search, one of {SEARCHES}; 'none' gives every layer the target"},
    )
    factor_bits: int = field(
        default=4,
        metadata={
            "help": "bits per stored low-rank factor value: 16 (the weight's dtype) or 4 (packed, one range "
            "per rank component; the same bytes buy four times the rank, rsparse.factor_quant)"
        },
    )
    factorization: str = field(
        default="activation",
        metadata={
            "help": f"low-rank fit, one of {FACTORIZATIONS}: SVD weighted by the inactive inputs' second "
            f"moment, or the plain SVD of the weight"
        },
    )
    min_layer_sparsity: float = field(default=0.0, metadata={"help": "lower bound of a layer's sparsity in the search"})
    max_layer_sparsity: float = field(
        default=0.95, metadata={"help": "upper bound of a layer's sparsity in the search"}
    )
    search_evaluations: int = field(
        default=32, metadata={"help": "end-to-end evaluations (KL on held-out calibration tokens) the search may spend"}
    )
    search_time_limit: float | None = field(
        default=None, metadata={"help": "seconds after which the search stops evaluating; None: no limit"}
    )
    search_holdout: float = field(
        default=0.25, metadata={"help": "share of calibration sequences held out to score budgets in the search"}
    )
    calibration_source: str = field(
        default="self-generated",
        metadata={"help": "where calibration tokens came from (recorded by sparsify)"},
    )
    calibration_samples: int = field(
        default=16, metadata={"help": "number of calibration sequences (self-generated or from text)"}
    )
    calibration_seq_len: int = field(default=256, metadata={"help": "tokens per calibration sequence"})
    calibration_batch_size: int = field(
        default=8, metadata={"help": "sequences per forward call during calibration"}
    )
    include: list[str] = field(
        default_factory=lambda: ["*"],
        metadata={"help": "fnmatch patterns of linear names (inside the decoder layers) to sparsify"},
    )
    exclude: list[str] = field(
        default_factory=list, metadata={"help": "fnmatch patterns of linear names to leave dense"}
    )
    seed: int = field(default=0, metadata={"help": "seed of calibration sampling and search"})
    decode_cutoff: int = field(
        default=8,
        metadata={"help": "in mode 'auto', calls carrying at most this many tokens take the sparse path"},
    )
    mode: str = field(default="auto", metadata={"help": f"forward mode after sparsify, one of {MODES}"})
    layers: dict[str, LayerBudget] = field(
        default_factory=dict, metadata={"help": "per-layer budgets, filled in by sparsify"}
    )
    groups: list[list[str]] = field(
        default_factory=list,
        metadata={
            "help": "layers that read the same input (q/k/v, gate/up), in call order, served by one "
            "fused launch per decode step; filled in by sparsify"
        },
    )
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "on-disk format version"})
    library_version: str = field(
        default_factory=_library_version, metadata={"help": "rsparse version that wrote the config"}
    )

    def __post_init__(self) -> None:
        self.layers = {
            name: b if isinstance(b, LayerBudget) else LayerBudget.from_dict(b)
            for name, b in self.layers.items()
        }
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first field that holds an invalid value."""
        if not isinstance(self.target, (int, float)) or not 0.0 <= self.target < 1.0:
            raise ValueError(f"target must be a float in [0, 1), got {self.target!r}")
        if self.rho is not None and (not isinstance(self.rho, (int, float)) or not 0.0 <= self.rho <= 1.0):
            raise ValueError(f"rho must be None or a float in [0, 1], got {self.rho!r}")
        for name, value, choices in (
            ("score", self.score, SCORES),
            ("search", self.search, SEARCHES),
            ("mode", self.mode, MODES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        if isinstance(self.factor_bits, bool) or self.factor_bits not in FACTOR_BITS:
            raise ValueError(f"factor_bits must be one of {list(FACTOR_BITS)}, got {self.factor_bits!r}")
        if self.factorization not in FACTORIZATIONS:
            raise ValueError(f"factorization must be one of {list(FACTORIZATIONS)}, got {self.factorization!r}")
        lo, hi = self.min_layer_sparsity, self.max_layer_sparsity
        if not all(isinstance(v, (int, float)) for v in (lo, hi)) or not 0.0 <= lo <= hi < 1.0:
            raise ValueError(
                f"layer sparsity bounds must satisfy 0 <= min_layer_sparsity <= max_layer_sparsity < 1, "
                f"got min_layer_sparsity={lo!r}, max_layer_sparsity={hi!r}"
            )
        if self.search != "none" and not lo <= self.target <= hi:
            bound = "max_layer_sparsity" if self.target > hi else "min_layer_sparsity"
            raise ValueError(
                f"target {self.target} cannot be met within the per-layer bounds: {bound} is "
                f"{hi if self.target > hi else lo}; widen the bound or use search='none'"
            )
        if isinstance(self.search_evaluations, bool) or not isinstance(self.search_evaluations, int) or self.search_evaluations < 1:
            raise ValueError(
                f"search_evaluations must be an int >= 1 (the search needs at least one evaluation), "
                f"got {self.search_evaluations!r}"
            )
        if self.search_time_limit is not None and (
            not isinstance(self.search_time_limit, (int, float)) or self.search_time_limit <= 0
        ):
            raise ValueError(f"search_time_limit must be None or seconds > 0, got {self.search_time_limit!r}")
        if not isinstance(self.search_holdout, (int, float)) or not 0.0 < self.search_holdout < 1.0:
            raise ValueError(f"search_holdout must be a float in (0, 1), got {self.search_holdout!r}")
        for name in ("calibration_samples", "calibration_seq_len", "calibration_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.decode_cutoff, int) or self.decode_cutoff < 0:
            raise ValueError(f"decode_cutoff must be an int >= 0, got {self.decode_cutoff!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"{name} must be a list of fnmatch patterns, got {value!r}")
        if isinstance(self.groups, str) or not all(
            isinstance(g, (list, tuple)) and all(isinstance(n, str) for n in g) for g in self.groups
        ):
            raise ValueError(f"groups must be a list of lists of layer names, got {self.groups!r}")
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this rsparse supports "
                f"({FORMAT_VERSION}); upgrade rsparse"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; `from_dict` reverses it."""
        data = dataclasses.asdict(self)
        data["include"] = list(self.include)
        data["exclude"] = list(self.exclude)
        data["groups"] = [list(g) for g in self.groups]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RSparseConfig":
        """Build a config from `to_dict` output; unknown keys raise `ValueError` listing the valid ones."""
        if isinstance(data, dict) and "factor_bits" not in data and data.get("format_version", FORMAT_VERSION) < 3:
            # Written before 4-bit factors existed: its factors are 16-bit whatever today's default is.
            data = {**data, "factor_bits": 16}
        return _from_dict(cls, data)
