"""The adoption rules for the kernels' off-by-default switches, applied to the JSON lines of `long_input_z.py` and
`dot_z_items.py`.  Written before the runs they judge, so that a device call can time the switches, adopt the winners
and time the acceptance rows with them in one go (the machine goes back 30 s after a call).

* ``Z_AFTER_WEIGHTS``, per factor kind (``bf16`` -> "plain", ``4bit`` -> "packed"): the ``*_z_late`` variant is faster
  than the shipped one on every down_proj row (each sparsity), no row of any case is more than 1 % slower, and the sum
  over all rows is lower.
* ``PACKED_LONG_INPUT_WIDE_Z``: ``4bit_wide`` faster than ``4bit`` on down_proj at every sparsity timed (compared with
  z late on both sides when packed z late was adopted).
* ``DOT_Z_ITEMS``, per factor kind: ``z_items`` faster than ``shipped`` on every case timed.

    python benchmarks/ablations/adopt_switches.py --long A/long_input_z.jsonl B/long_input_z.jsonl \
        --dot C/dot_z_items.jsonl [--apply src/rsparse/kernels/sparse_linear.py]

Prints the decisions as one JSON object; ``--apply`` rewrites the switches' assignments in the kernel module.
"""
import argparse
import json
import re
from pathlib import Path

KINDS = {"plain": "bf16", "packed": "4bit"}


def read(paths):
    """The rows of the files that exist (a step that ran out of time leaves none: its switches stay off)."""
    return [json.loads(line) for p in paths if Path(p).exists()
            for line in Path(p).read_text().splitlines() if line.strip()]


def pairs(rows, base, variant):
    """(case, sparsity, base µs, variant µs) for every case and sparsity timed with both variants."""
    at = {(r["case"], r["sparsity"], r["variant"]): r["us"] for r in rows}
    return [(c, s, us, at[(c, s, variant)]) for (c, s, v), us in at.items() if v == base and (c, s, variant) in at]


def z_late_wins(rows, base):
    got = pairs(rows, base, base + "_z_late")
    down = [p for p in got if p[0].startswith("down")]
    return bool(down) and all(late < us for _, _, us, late in down) and all(
        late <= 1.01 * us for _, _, us, late in got) and sum(p[3] for p in got) < sum(p[2] for p in got)


def switch_value(on: dict) -> object:
    """True / False / "packed" / "plain" from ``{"plain": bool, "packed": bool}``."""
    if on["plain"] and on["packed"]:
        return True
    return next((kind for kind in ("plain", "packed") if on[kind]), False)


def decide(long_rows, dot_rows) -> dict:
    late = {kind: z_late_wins(long_rows, name) for kind, name in KINDS.items()}
    base, wide = ("4bit_z_late", "4bit_wide_z_late") if late["packed"] else ("4bit", "4bit_wide")
    wide_pairs = [p for p in pairs(long_rows, base, wide) if p[0].startswith("down")]
    dot = {}
    for kind, bits in (("plain", 16), ("packed", 4)):
        got = pairs([r for r in dot_rows if r["factor_bits"] == bits], "shipped", "z_items")
        dot[kind] = bool(got) and all(z < us for _, _, us, z in got)
    return {"Z_AFTER_WEIGHTS": switch_value(late),
            "PACKED_LONG_INPUT_WIDE_Z": bool(wide_pairs) and all(w < us for _, _, us, w in wide_pairs),
            "DOT_Z_ITEMS": switch_value(dot)}


def apply(path: Path, decisions: dict) -> None:
    text = path.read_text()
    for name, value in decisions.items():
        text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, flags=re.M)
        if count != 1:
            raise ValueError(f"expected one assignment of {name} in {path}, found {count}")
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--long", nargs="*", default=[])
    p.add_argument("--dot", nargs="*", default=[])
    p.add_argument("--apply", type=Path)
    args = p.parse_args()
    decisions = decide(read(args.long), read(args.dot))
    print(json.dumps(decisions))
    if args.apply:
        apply(args.apply, decisions)


if __name__ == "__main__":
    main()
