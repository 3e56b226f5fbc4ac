"""The ``rsparse`` console script: sparsify, evaluate, benchmark and inspect models from a shell.

```
rsparse sparsify MODEL --target 0.5 --out DIR [--calib FILE] [--seed N] [--device auto|cpu|cuda]
rsparse eval MODEL_OR_DIR [--tasks ppl piqa ...] [--protocol strict|deployment] [--text FILE]
rsparse bench MODEL_OR_DIR [--batch-size 1] [--new-tokens 256]
rsparse summary DIR
```

MODEL is a local model folder, a Hugging Face Hub id, or a ``.gguf`` file. A user mistake
prints ``rsparse: error: ...`` on stderr, without a traceback, and exits with 2 (the command
line asks for something that cannot be done: a missing folder, a bad value, a folder that is
not an rsparse checkpoint) or 1 (something failed while running: loading, calibration, a
missing optional package). Results go to stdout, progress and logging to stderr; ``--quiet``
silences progress bars and logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "CliError", "UsageError", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PPL = "ppl"
# The zero-shot tasks of `rsparse.eval.multiple_choice`; the installed `rsparse.eval.TASKS` wins.
EXPECTED_MC_TASKS = ("piqa", "hellaswag", "arc_easy", "winogrande", "boolq")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Any of these in a model folder means it ships a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


class CliError(Exception):
    """A failure while running a command; the CLI prints ``rsparse: error: <message>`` and exits 1.

    Example:

    ```python
    >>> raise CliError("could not load 'x'")  # doctest: +SKIP
    ```
    """

    exit_code = EXIT_RUNTIME


class UsageError(CliError):
    """A command line that cannot be carried out (bad value, missing path); exits 2.

    Example:

    ```python
    >>> raise UsageError("no such folder: /data/model")  # doctest: +SKIP
    ```
    """

    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors read ``rsparse: error: ...`` in every subcommand."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"rsparse: error: {message}\n")


# --------------------------------------------------------------------------- argument types


def _target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (the share of weight bytes skipped), got {text}")
    return value


def _rho(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device_name(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``rsparse`` argument parser, with its four subcommands.

    Returns:
        `argparse.ArgumentParser`; `main` runs what it parses.

    Example:

    ```python
    >>> from rsparse.cli import build_parser
    >>> build_parser().parse_args(["summary", "out/"]).command
    'summary'
    ```
    """
    from rsparse import __version__
    from rsparse.config import SCORES, SEARCHES, RSparseConfig
    from rsparse.eval import PROTOCOLS

    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no logging: results and errors only")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    loading = _Parser(add_help=False)
    loading.add_argument("--device", type=_device_name, default="auto",
                         help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")
    loading.add_argument("--dtype", choices=DTYPES, default="auto",
                         help="weight dtype; auto = float32 on CPU, bfloat16 on CUDA (default: auto)")

    defaults = RSparseConfig()

    def sparsify_options(parser: argparse.ArgumentParser, target_default: float | None) -> None:
        group = parser.add_argument_group("sparsification")
        if target_default is None:
            group.add_argument("--target", type=_target, default=None,
                               help="sparsify a dense MODEL in memory first, to this model-level sparsity in [0, 1)")
        else:
            group.add_argument("--target", type=_target, default=target_default,
                               help=f"model-level sparsity in [0, 1) (default: {target_default})")
        group.add_argument("--calib", type=Path, metavar="FILE",
                           help="calibration text file: passages separated by blank lines, or one per line "
                                "(default: text sampled from the model itself, offline)")
        group.add_argument("--samples", type=_positive_int, default=16, help="calibration sequences (default: 16)")
        group.add_argument("--seq-len", type=_positive_int, default=256, help="tokens per calibration sequence (default: 256)")
        group.add_argument("--seed", type=int, default=0, help="seed of calibration sampling (default: 0)")
        group.add_argument("--score", choices=SCORES, default="auto",
                           help="channel score rule (default: auto, the search chooses)")
        group.add_argument("--search", choices=SEARCHES, default=defaults.search,
                           help=f"per-layer budget search; 'none' gives every layer the target (default: {defaults.search})")
        group.add_argument("--rho", type=_rho, default=None,
                           help="share of each layer's budget spent on channels, the rest buys rank "
                                "(default: chosen by the search; 1.0 with --search none)")
        if hasattr(defaults, "factorization"):
            from rsparse.config import FACTORIZATIONS

            group.add_argument("--factorization", choices=FACTORIZATIONS, default=defaults.factorization,
                               help=f"low-rank fit (default: {defaults.factorization})")
        if hasattr(defaults, "factor_bits"):
            from rsparse.config import FACTOR_BITS

            group.add_argument("--factor-bits", type=int, choices=FACTOR_BITS, default=defaults.factor_bits,
                               help="bits per stored low-rank factor value; 4 buys four times the rank "
                                    f"for the same bytes (default: {defaults.factor_bits})")

    parser = _Parser(
        prog="rsparse",
        description="R-Sparse (rank-aware activation sparsity) for Hugging Face causal LMs.",
        epilog="MODEL is a local model folder, a Hugging Face Hub id or a .gguf file. Exit codes: 0 success, "
               "1 failure while running, 2 bad command line (missing folder, bad value, not an rsparse folder).",
    )
    parser.add_argument("--version", action="version", version=f"rsparse {__version__}")
    # Also accepted before the command (``rsparse -q summary DIR``); merged in `main`.
    parser.add_argument("-q", "--quiet", action="store_true", dest="global_quiet", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", dest="global_debug", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("sparsify", parents=[common, loading], help="sparsify MODEL and save it to --out",
                       description="Calibrate thresholds, install RSparseLinear layers and save model + tokenizer.")
    p.add_argument("model", metavar="MODEL", help="local folder, Hub id or .gguf file of a dense causal LM")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the sparsified model to")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    sparsify_options(p, 0.5)

    p = sub.add_parser("eval", parents=[common, loading], help="perplexity and zero-shot accuracy",
                       description="Perplexity on held-out BoolQ passages (or --text FILE) and zero-shot tasks.")
    p.add_argument("model", metavar="MODEL_OR_DIR",
                   help="a folder written by 'rsparse sparsify', or a dense MODEL (evaluated dense unless --target)")
    p.add_argument("--tasks", nargs="+", default=[PPL], metavar="TASK",
                   help=f"'{PPL}' and/or zero-shot tasks {', '.join(EXPECTED_MC_TASKS)}; comma or space separated "
                        f"(default: {PPL})")
    p.add_argument("--protocol", choices=PROTOCOLS, default="strict",
                   help="strict: every token sparse; deployment: the context runs dense, scored tokens sparse (default: strict)")
    p.add_argument("--limit", type=_positive_int, default=None, help="examples per zero-shot task (default: all)")
    p.add_argument("--text", type=Path, metavar="FILE", help="perplexity on this text file instead of BoolQ passages")
    p.add_argument("--windows", type=_positive_int, default=8, help="perplexity windows (default: 8)")
    p.add_argument("--window-len", type=_positive_int, default=512, help="tokens per perplexity window (default: 512)")
    p.add_argument("--context", type=_positive_int, default=None,
                   help="deployment protocol: dense prefix tokens per window (default: half the window)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    sparsify_options(p, None)

    p = sub.add_parser("bench", parents=[common, loading], help="decode speed, sparse vs dense, on this device",
                       description="Decode speed of the sparse model and of the same model run dense.")
    p.add_argument("model", metavar="MODEL_OR_DIR", help="a folder written by 'rsparse sparsify', or a dense MODEL with --target")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="sequences decoded together (default: 1)")
    p.add_argument("--prompt-len", type=_positive_int, default=128, help="prompt tokens, prefilled dense (default: 128)")
    p.add_argument("--new-tokens", type=_positive_int, default=256, help="tokens decoded per repeat (default: 256)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed repeats (default: 3)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the decode step into a CUDA graph, as generate does with a static cache "
                        "(default: on CUDA devices; eager decoding is bound by host time and hides the speed-up)")
    attention = p.add_mutually_exclusive_group()
    attention.add_argument("--packed-attention", action="store_true",
                           help="both runs attend with rsparse.bench.use_packed_attention: a decode token's grouped query "
                                "heads on their own K/V head, instead of the K/V cache copied to every query head")
    attention.add_argument("--split-key-attention", action="store_true",
                           help="both runs attend with rsparse.bench.use_split_key_attention: packed as with "
                                "--packed-attention, a decode token's keys split over many programs of a Triton kernel "
                                "(the fastest decode attention on an H200, decode run 45)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    sparsify_options(p, None)

    p = sub.add_parser("summary", parents=[common, loading], help="per-layer budgets of a sparsified folder",
                       description="Print rsparse.summary of a folder written by 'rsparse sparsify'.")
    p.add_argument("dir", type=Path, metavar="DIR", help="a folder written by 'rsparse sparsify' (or save_pretrained)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the ``rsparse`` command line and return its exit code.

    Args:
        argv (`list[str]`, *optional*): the arguments after the program name; defaults to
            ``sys.argv[1:]``.

    Returns:
        `int`: 0 on success, 1 when something failed while running, 2 for a bad command line.
        Errors are printed as ``rsparse: error: ...`` on stderr, without a traceback.

    Example:

    ```python
    >>> from rsparse.cli import main
    >>> main(["summary", "out/"])  # doctest: +SKIP
    0
    ```
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse has printed them
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("rsparse: error: a command is required: sparsify, eval, bench or summary", file=sys.stderr)
        return EXIT_USAGE
    args.quiet = args.quiet or args.global_quiet
    args.debug = args.debug or args.global_debug
    command = {"sparsify": _cmd_sparsify, "eval": _cmd_eval, "bench": _cmd_bench, "summary": _cmd_summary}[args.command]
    try:
        with _output_settings(args.quiet):
            command(args)
    except KeyboardInterrupt:
        print("rsparse: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CliError as e:
        if args.debug:
            raise
        print(f"rsparse: error: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        # Raised by rsparse, transformers or torch for bad input or an unusable environment
        # (e.g. "the model is already sparsified", out of memory): the message says what to do.
        if args.debug:
            raise
        print(f"rsparse: error: {_first_lines(e)}", file=sys.stderr)
        if not args.quiet:
            print("rsparse: (run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _first_lines(error: BaseException, lines: int = 3) -> str:
    text = str(error).strip() or type(error).__name__
    return "\n".join(text.splitlines()[:lines])


@contextlib.contextmanager
def _output_settings(quiet: bool) -> Iterator[None]:
    """Route rsparse logging to stderr, or silence it and every progress bar; restore on exit."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("rsparse")
    hub_logger = logging.getLogger("huggingface_hub")  # its download retries log warnings
    saved = (logger.level, logger.propagate, hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
             hub_logger.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        if quiet:
            # Some libraries draw progress bars that no setting reaches (the GGUF loader's tqdm):
            # while quiet, stderr goes nowhere; main prints errors after this context exits.
            stack.enter_context(contextlib.redirect_stderr(stack.enter_context(open(os.devnull, "w"))))
            warnings.simplefilter("ignore")
            logger.setLevel(logging.ERROR)
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            hub_logger.setLevel(logging.ERROR)
        else:
            logger.setLevel(logging.INFO)
            logger.addHandler(handler)
            logger.propagate = False  # one line per message even when the root logger also prints
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
            hf_logging.set_verbosity(saved[2])
            if saved[3]:
                hf_logging.enable_progress_bar()
            hub_logger.setLevel(saved[4])


def _say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- loading


def _device(args: argparse.Namespace):
    import torch

    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def _dtype(args: argparse.Namespace, device):
    import torch

    if args.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, args.dtype)


def _dtype_kwargs(dtype) -> dict[str, Any]:
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _resolve(source: str, what: str = "MODEL") -> tuple[str, Path | None]:
    """Classify MODEL as ``("folder" | "gguf" | "hub", path)``; a missing path is a usage error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{what} {source} is a folder without config.json: not a Hugging Face model folder")
        return "folder", path
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", path
        raise UsageError(f"{what} {source} is a file; expected a model folder, a .gguf file or a Hub id")
    if path.suffix.lower() == ".gguf":
        raise UsageError(f"no such GGUF file: {source}")
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise UsageError(f"no such folder: {source} (and it is not a Hugging Face Hub id either)") from None
    return "hub", None


def _is_rsparse_config(config: Any) -> bool:
    qconfig = getattr(config, "quantization_config", None)
    method = qconfig.get("quant_method") if isinstance(qconfig, dict) else getattr(qconfig, "quant_method", None)
    return method == "rsparse"


def _load(args: argparse.Namespace, source: str, *, need_tokenizer: bool) -> tuple[Any, Any, bool]:
    """Load MODEL (folder, Hub id or GGUF) on ``--device`` in ``--dtype``.

    Returns ``(model, tokenizer or None, is_rsparse_checkpoint)``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import rsparse

    kind, path = _resolve(source)
    device = _device(args)
    dtype = _dtype(args, device)
    _say(args, f"rsparse: loading {source} ({kind}, {str(dtype).replace('torch.', '')}, {device}) ...")
    if kind == "gguf":
        location, extra = str(path.parent), {"gguf_file": path.name}
        is_rsparse = False
    else:
        location, extra = (str(path) if path else source), {}
        try:
            is_rsparse = _is_rsparse_config(AutoConfig.from_pretrained(location))
        except OSError as e:
            if kind == "hub":
                raise CliError(
                    f"could not load {source}: it is not a local folder, and the Hugging Face Hub did not serve it "
                    f"(check the id and the network; HF_HUB_OFFLINE=1 skips the network): {_first_lines(e, 1)}"
                ) from None
            raise CliError(f"could not load {source}: {_first_lines(e, 1)}") from None
    verbosity = hf_logging.get_verbosity()
    if kind == "gguf":
        hf_logging.set_verbosity_error()  # the GGUF loader logs every tensor it dequantises
    try:
        if is_rsparse:
            model = rsparse.from_pretrained(location, **_dtype_kwargs(dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(location, **extra, **_dtype_kwargs(dtype))
        tokenizer, problem = None, "no tokenizer files"
        if kind != "folder" or any((path / f).is_file() for f in TOKENIZER_FILES):
            try:
                tokenizer = AutoTokenizer.from_pretrained(location, **extra)
            except (OSError, ValueError, TypeError, KeyError) as e:
                problem = _first_lines(e, 1)
        if tokenizer is not None and len(tokenizer) <= 1:
            # transformers 5 builds an empty tokenizer from the model type when files are missing
            tokenizer, problem = None, "an empty vocabulary"
        if tokenizer is None and need_tokenizer:
            raise CliError(f"{source} has no usable tokenizer ({problem}), which this command needs")
    except ImportError as e:
        hint = " (GGUF files need: pip install gguf)" if kind == "gguf" else ""
        raise CliError(f"could not load {source}: {_first_lines(e, 1)}{hint}") from None
    except OSError as e:
        raise CliError(f"could not load {source}: {_first_lines(e, 1)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device).eval(), tokenizer, is_rsparse


def _calibration_texts(file: Path) -> list[str]:
    """Passages of a calibration file: blocks separated by blank lines, else one per line."""
    if not file.is_file():
        raise UsageError(f"no such calibration file: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"calibration file {file} is not UTF-8 text") from None
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    passages = blocks if len(blocks) > 1 else [line.strip() for line in text.splitlines() if line.strip()]
    if not passages:
        raise UsageError(f"calibration file {file} is empty")
    return passages


def _sparsify_in_place(args: argparse.Namespace, model: Any, tokenizer: Any) -> None:
    """Run `rsparse.sparsify` with the command line's options."""
    import rsparse
    from rsparse.config import RSparseConfig

    calibration = None
    if args.calib is not None:
        if tokenizer is None:
            raise CliError(f"--calib {args.calib} needs the model's tokenizer, and {args.model} has none")
        calibration = _calibration_texts(args.calib)
    extra = {"factorization": args.factorization} if hasattr(args, "factorization") else {}
    if hasattr(args, "factor_bits"):
        extra["factor_bits"] = args.factor_bits
    config = RSparseConfig(
        target=args.target, rho=args.rho, score=args.score, search=args.search, seed=args.seed,
        calibration_samples=args.samples, calibration_seq_len=args.seq_len, **extra,
    )
    _say(args, f"rsparse: sparsifying to target {args.target} "
               f"({'calibration text ' + str(args.calib) if calibration else 'self-generated calibration text'}) ...")
    rsparse.sparsify(
        model, args.target, calibration=calibration, tokenizer=tokenizer, search=args.search, score=args.score,
        rho=args.rho, seed=args.seed, show_progress=not args.quiet, config=config,
    )


def _load_for_use(args: argparse.Namespace, *, need_tokenizer: bool, need_sparse: bool) -> tuple[Any, Any]:
    """Load MODEL_OR_DIR for eval/bench: a checkpoint as is, a dense model sparsified with --target."""
    if args.calib is not None and args.target is None:
        raise UsageError("--calib is used with --target (to sparsify a dense model in memory)")
    if args.target is None and need_sparse:
        _check_sparse_source(args.model)
    model, tokenizer, is_rsparse = _load(args, args.model, need_tokenizer=need_tokenizer or args.calib is not None)
    if args.target is not None:
        if is_rsparse:
            raise UsageError(f"{args.model} is already sparsified; --target applies to dense models only")
        _sparsify_in_place(args, model, tokenizer)
    elif need_sparse and not is_rsparse:
        raise UsageError(f"{args.model} is a dense model: give --target to sparsify it first")
    return model, tokenizer


def _check_sparse_source(source: str) -> None:
    """Fail early (before loading weights) when a local folder is not an rsparse checkpoint."""
    kind, path = _resolve(source)
    if kind == "gguf":
        raise UsageError(f"{source} is a dense GGUF model: give --target to sparsify it first")
    if kind == "folder" and not _folder_is_rsparse(path):
        raise UsageError(f"{source} is a dense model (not written by 'rsparse sparsify'): give --target to sparsify it first")


def _folder_is_rsparse(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    qconfig = config.get("quantization_config")
    return isinstance(qconfig, dict) and qconfig.get("quant_method") == "rsparse"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- commands


def _cmd_sparsify(args: argparse.Namespace) -> None:
    import rsparse

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {out} is not empty; choose another folder or pass --overwrite")
    if args.calib is not None:
        _calibration_texts(args.calib)  # check before the (slow) load
    kind, path = _resolve(args.model)
    if kind == "folder" and _folder_is_rsparse(path):
        raise UsageError(f"{args.model} is already sparsified; sparsify a dense model")
    model, tokenizer, _ = _load(args, args.model, need_tokenizer=args.calib is not None)
    _sparsify_in_place(args, model, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    _say(args, f"rsparse: saving to {out} ...")
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    else:
        _say(args, f"rsparse: {args.model} has no tokenizer; saved the model only")
    report = rsparse.summary(model)
    print(f"sparsified {args.model}: {len(report.layers)} linears, model-level sparsity "
          f"{report.model_sparsity:.4f}; saved to {out}")


def _cmd_summary(args: argparse.Namespace) -> None:
    import dataclasses

    import rsparse

    folder: Path = args.dir
    if not folder.exists():
        raise UsageError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file; expected a folder written by 'rsparse sparsify'")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} has no config.json: not a model folder")
    if not _folder_is_rsparse(folder):
        raise UsageError(f"{folder} is not an rsparse checkpoint (its config.json has no rsparse "
                         f"quantization_config): run 'rsparse sparsify' first")
    device = _device(args)
    dtype = _dtype(args, device)
    _say(args, f"rsparse: loading {folder} ...")
    model = rsparse.from_pretrained(folder, **_dtype_kwargs(dtype)).to(device)
    report = rsparse.summary(model)
    cfg = model.rsparse_config
    if args.json:
        _print_json({"dir": str(folder), "config": {k: v for k, v in cfg.to_dict().items() if k != "layers"},
                     **dataclasses.asdict(report)})
        return
    rho = cfg.rho if cfg.rho is not None else ("per layer" if cfg.search != "none" else 1.0)
    print(f"{folder}: target {cfg.target}, score {cfg.score}, search {cfg.search}, rho {rho}, "
          f"calibration {cfg.calibration_source} ({cfg.calibration_samples} x {cfg.calibration_seq_len}), "
          f"seed {cfg.seed}, rsparse {cfg.library_version}")
    print(report)


def _eval_tasks(requested: list[str]) -> list[str]:
    import rsparse.eval

    names = [t.strip() for item in requested for t in item.split(",") if t.strip()]
    valid = (PPL, *getattr(rsparse.eval, "TASKS", EXPECTED_MC_TASKS))
    unknown = [t for t in names if t not in valid]
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; choose from {', '.join(valid)}")
    if not names:
        raise UsageError(f"--tasks is empty; choose from {', '.join(valid)}")
    if any(t != PPL for t in names) and not hasattr(rsparse.eval, "multiple_choice"):
        raise CliError("zero-shot tasks need rsparse.eval.multiple_choice, which this rsparse installation "
                       "lacks (upgrade rsparse); '--tasks ppl' works")
    return list(dict.fromkeys(names))


def _cmd_eval(args: argparse.Namespace) -> None:
    import rsparse.eval as reval

    tasks = _eval_tasks(args.tasks)
    if args.text is not None and not args.text.is_file():
        raise UsageError(f"no such text file: {args.text}")
    if args.context is not None and args.context >= args.window_len:
        raise UsageError(f"--context must be smaller than --window-len ({args.window_len}), got {args.context}")
    model, tokenizer = _load_for_use(args, need_tokenizer=True, need_sparse=False)
    results = []
    for task in tasks:
        _say(args, f"rsparse: {task}, {args.protocol} protocol ...")
        if task == PPL:
            if args.text is not None:
                texts, source = _calibration_texts(args.text), str(args.text)
            else:
                texts, source = reval.boolq_passages("heldout"), "boolq-heldout"
            windows = reval.text_windows(texts, tokenizer, args.window_len, args.windows)
            context = args.context if args.context is not None else windows.shape[1] // 2
            value = reval.perplexity(model, windows, protocol=args.protocol, context=context)
            results.append({"task": PPL, "protocol": args.protocol, "text": source, "windows": windows.shape[0],
                            "window_len": windows.shape[1],
                            "context": context if args.protocol == "deployment" else 0, "perplexity": value})
        else:
            result = reval.multiple_choice(model, tokenizer, task, protocol=args.protocol, limit=args.limit,
                                           show_progress=not args.quiet, seed=args.seed)
            results.append(dict(result))
    if args.json:
        _print_json({"model": args.model, "results": results})
        return
    for r in results:
        if r["task"] == PPL:
            print(f"{'ppl':<12} {r['protocol']:<10} perplexity {r['perplexity']:.3f}  "
                  f"({r['windows']} x {r['window_len']} tokens of {r['text']})")
        else:
            line = f"{r['task']:<12} {r.get('protocol', args.protocol):<10} acc {_fmt(r.get('acc'))}"
            line += f"  acc_norm {_fmt(r.get('acc_norm'))}  n {r.get('n', '?')}"
            print(line)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _cmd_bench(args: argparse.Namespace) -> None:
    import rsparse
    from rsparse.nn import rsparse_modules

    if args.target is None:
        _check_sparse_source(args.model)  # a usage error comes before a missing-feature one
    try:
        from rsparse.bench import decode_speed
    except ImportError:
        raise CliError("'rsparse bench' needs rsparse.bench.decode_speed, which this rsparse installation lacks "
                       "(upgrade rsparse)") from None
    model, _ = _load_for_use(args, need_tokenizer=False, need_sparse=True)
    if args.packed_attention or args.split_key_attention:
        from rsparse.bench import use_packed_attention, use_split_key_attention

        flag, use = (("--packed-attention", use_packed_attention) if args.packed_attention
                     else ("--split-key-attention", use_split_key_attention))
        try:
            use(model)
        except ValueError as e:  # a family without SDPA attention
            raise CliError(f"{flag}: {e}") from None
    device = next(model.parameters()).device
    compiled = device.type == "cuda" if args.compile is None else args.compile
    kw = dict(batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
              compile=compiled, repeats=args.repeats)
    attention = model.config._attn_implementation
    modes = {name: m.mode for name, m in rsparse_modules(model).items()}
    _say(args, f"rsparse: decode speed on {device}, sparse ...")
    sparse = decode_speed(model, **kw)
    rsparse.set_mode(model, "dense")
    try:
        _say(args, "rsparse: decode speed, dense ...")
        dense = decode_speed(model, **kw)
    finally:
        for name, m in rsparse_modules(model).items():
            m.set_mode(modes[name])
    speedup = dense["ms_per_token"] / sparse["ms_per_token"]
    if args.json:
        _print_json({"model": args.model, "device": str(device), **kw, "attention": attention, "sparse": sparse,
                     "dense": dense, "speedup": speedup})
        return
    print(f"decode on {device}, batch {args.batch_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.repeats} repeats, {'compiled' if compiled else 'eager'}, attention {attention}")
    print(f"{'':<8} {'ms/token':>10} {'tokens/s':>10} {'peak MB':>10}")
    for name, r in (("sparse", sparse), ("dense", dense)):
        peak = r.get("peak_memory_mb")
        peak_text = f"{peak:>10.1f}" if isinstance(peak, (int, float)) else f"{'-':>10}"  # None on the CPU
        print(f"{name:<8} {r['ms_per_token']:>10.3f} {r['tokens_per_s']:>10.1f} {peak_text}")
    print(f"speedup (dense ms / sparse ms): {speedup:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
