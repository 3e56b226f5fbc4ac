"""Documentation: every public name has a docstring with an example, docs/api.md lists it, the
runnable examples pass, and relative links in the docs point at files that exist."""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

import rsparse

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()


def _module_public(module_name: str) -> dict[str, object]:
    """Functions and classes a module defines itself and does not mark private."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return {}
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return {
        f"{module_name}.{n}": obj
        for n in names
        if (inspect.isfunction(obj := getattr(module, n)) or inspect.isclass(obj))
        and getattr(obj, "__module__", "") == module_name
    }


def public_objects() -> dict[str, object]:
    found = {f"rsparse.{n}": getattr(rsparse, n) for n in rsparse.__all__ if n != "__version__"}
    for module in ("rsparse.eval", "rsparse.cli", "rsparse.bench", "rsparse.lm_eval"):  # lm_eval: if installed
        found.update(_module_public(module))
    return found


PUBLIC = public_objects()


def test_the_public_surface_is_found():
    assert {"rsparse.sparsify", "rsparse.RSparseLinear", "rsparse.eval.perplexity", "rsparse.cli.main"} <= set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_has_an_example(name):
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert "Example" in doc and ">>>" in doc, f"{name} needs a docstring with an example"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_api_reference_lists_it(name):
    short = name.rsplit(".", 1)[1]
    assert f"`{name}" in API or f"`{short}" in API, f"docs/api.md does not list {name}"


def _examples(obj) -> str:
    # Docstrings wrap examples in ``` fences (transformers style); doctest would read the
    # closing fence as expected output.
    return "\n".join(line for line in (inspect.getdoc(obj) or "").splitlines() if not line.strip().startswith("```"))


RUNNABLE = {
    "rsparse.RSparseConfig": rsparse.RSparseConfig,
    "rsparse.LayerBudget": rsparse.LayerBudget,
    "rsparse.RSparseLinear": rsparse.RSparseLinear,
    "rsparse.cli.build_parser": PUBLIC["rsparse.cli.build_parser"],
    "rsparse.budget.layer_budget": importlib.import_module("rsparse.budget").layer_budget,
    "rsparse.factorize.lowrank_factors": importlib.import_module("rsparse.factorize").lowrank_factors,
}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_runnable_examples_pass(name):
    obj = RUNNABLE[name]
    module = importlib.import_module(obj.__module__)
    globs = {**vars(module), "rsparse": rsparse, "torch": torch}
    test = doctest.DocTestParser().get_doctest(_examples(obj), globs, name, None, 0)
    assert [e for e in test.examples if "+SKIP" not in e.source and "doctest: +SKIP" not in e.source], name
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    torch.manual_seed(0)
    result = runner.run(test)
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed"


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
