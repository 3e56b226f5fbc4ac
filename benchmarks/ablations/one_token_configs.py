"""One token (or ``--batch`` tokens): the launch `choose_config` picks against forced configurations
(`sparse_linear.set_config`) or module settings, on the same layers in the same rounds, beside cuBLAS dense.  GPU only.

Written for acceptance 2's 70 % row (gate/up 4096->14336 at 2.2x over cuBLAS): on the H100 of kernel runs 62-64 the
compact path read 2.02-2.06x there and the split-K launch forced 2.14x (run 64, same rounds), while cuBLAS on a slice
as large as the rows read gets 2.22x (run 63).  Any case of `kernel_speed.CASES` and any `Config` fields can be given,
so the same script serves other rows.  ``--silu-fed`` calls a layer as `sparsify` installs a gated MLP's down
projection (``forward_silu_mul``: the one-token inline launch forms ``F.silu(gate) * up`` itself, every other path
after a product launch), beside ``F.linear(F.silu(gate) * up)``.

Variants: ``shipped`` (no override), then one per ``--config LABEL=key=value,...`` (the fields of
`sparse_linear.Config`, as for `kernel_speed.py --gemv1`).  ``--switch NAME=VALUE`` sets a module setting of
`sparse_linear` for every variant of the run (e.g. ``PACKED_LEVELS=byte_rows_z``), restored at the end;
``--switch-variant LABEL=NAME=VALUE`` adds a variant that runs the shipped tiles with that setting (e.g.
``pw2=PREWAIT=2``); a ``--switch-variant`` whose label is a ``--config``'s runs that config with those settings.
Each is checked against the PyTorch reference once, each
projection alone.  Prints JSON lines; writes ``--out``/one_token_configs.jsonl.  An adoption rule belongs in the
call that runs it, written before the run (see benchmarks/next_device_call.sh).

    python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.7 \\
        --config splitk=path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4 --out $OUT
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_speed import (  # noqa: E402
    CASES, parse_config, parse_switch, time_switch_variants, variant_timing, write_row,
)


def labelled_config(text: str):
    """``"LABEL=key=value,..."`` -> ``(label, Config)``."""
    label, sep, fields = text.partition("=")
    if not sep or not label or not fields:
        raise ValueError(f"--config expects LABEL=key=value,..., got {text!r}")
    return label, parse_config(fields, "config")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", nargs="+", required=True, help="the cases whose name contains one of these strings")
    p.add_argument("--sparsities", nargs="+", type=float, required=True)
    p.add_argument("--batch", type=int, default=1,
                   help="tokens per call (above 1 the batched launch runs; --config then forces its 'dot' tiles)")
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--factor-bits", type=int, default=16, choices=[16, 4])
    p.add_argument("--config", action="append", default=[], metavar="LABEL=KEY=VALUE,...")
    p.add_argument("--switch", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--switch-variant", action="append", default=[], metavar="LABEL=NAME=VALUE",
                   help="a variant that runs the shipped tiles with this module setting (repeat a label for several; "
                        "a --config's label: that config with the setting)")
    p.add_argument("--silu-fed", action="store_true",
                   help="call each layer as a gated MLP's down projection, forward_silu_mul(gate, up), as sparsify "
                        "installs it (one-projection cases only)")
    args = p.parse_args()
    if args.batch < 1 or (args.batch > 1 and args.silu_fed):
        raise ValueError(f"--batch expects a token count of 1 or more (1 with --silu-fed), got {args.batch}")
    switches = dict(parse_switch(text) for text in args.switch)
    configs = dict(labelled_config(text) for text in args.config)
    switch_variants: dict[str, dict] = {}
    for text in args.switch_variant:
        label, sep, setting = text.partition("=")
        if not sep or not label:
            raise ValueError(f"--switch-variant expects LABEL=NAME=VALUE, got {text!r}")
        switch_variants.setdefault(label, {}).update([parse_switch(setting)])
    labels = ["shipped", *configs, *(label for label in switch_variants if label not in configs)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must differ from each other and from 'shipped', got {labels}")
    cases = [name for name in CASES if any(c in name for c in args.cases)]
    if not cases:
        raise ValueError(f"--cases must match one of {sorted(CASES)}, got {args.cases}")
    import rsparse
    from rsparse.kernels import sparse_linear as K

    rsparse.set_backend("triton")
    gen = torch.Generator(device="cuda").manual_seed(0)
    varied = {name for settings in switch_variants.values() for name in settings}
    shipped = {name: getattr(K, name) for name in {*switches, *varied}}
    for name, value in switches.items():
        setattr(K, name, value)
    base = {name: getattr(K, name) for name in varied}  # what every other variant runs with

    kind = "gemv1" if args.batch == 1 else "dot"

    def forcing(cfg, settings=None):
        def apply():
            K.set_config(cfg, kind)
            for name in varied:
                setattr(K, name, (settings or {}).get(name, base[name]))
        return apply

    variants = {"shipped": (args.rho, args.factor_bits, forcing(None)),
                **{label: (args.rho, args.factor_bits, forcing(cfg, switch_variants.get(label)))
                   for label, cfg in configs.items()},
                **{label: (args.rho, args.factor_bits, forcing(None, settings))
                   for label, settings in switch_variants.items() if label not in configs}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "one_token_configs.jsonl", "w") as out:
        for s in args.sparsities:
            for name in cases:
                res, copies = time_switch_variants(name, args.batch, s, torch.bfloat16, "cuda", gen, args.reps,
                                                   args.rounds, variants, silu_fed=args.silu_fed)
                variants["shipped"][2]()  # back to the shipped tiles and settings
                for label in variants:
                    cfg = configs.get(label)
                    write_row(out, {"case": name, "sparsity": s, "batch": args.batch, "variant": label, "rho": args.rho,
                                    "factor_bits": args.factor_bits, "config": None if cfg is None else repr(cfg),
                                    "switches": {**switches, **switch_variants.get(label, {})},
                                    "silu_fed": args.silu_fed,
                                    **variant_timing(res, label), "copies": copies})
                out.flush()
    for name, value in shipped.items():
        setattr(K, name, value)


if __name__ == "__main__":
    main()
