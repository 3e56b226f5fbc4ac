"""Diagnostic (decode run 23): `benchmarks/decode.py` run as is, plus what its process leaves behind that could make
one process's target-0.7 row 10 % slower than another's on the same code (NOTES, run 22):

* every specialisation Triton compiled of rsparse's kernels (the key: pointer alignment, integer divisibility,
  constexprs) with its registers, spills, warps and stages;
* how often a launch inside a CUDA-graph capture found the persistent workspace too small and took a buffer of its
  own (a memset node in the graph; `rsparse.kernels.compact_gemv._workspace`'s rare path);
* after each row, on the same compiled step and cache: the host's time to issue one decode step with the GPU idle
  (synchronised before and after), and the GPU's time for that step alone (CUDA events), 32 steps each. Decode steps
  do not synchronise, so a row reads max(host, GPU) per step: a host cost above the GPU's is a floor.

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/decode_07_probe.py PROBE.json -- <decode.py arguments>

Written to PROBE.json after `decode.py` returns; `decode.py --profile` adds each row's kernel means.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from rsparse.kernels import compact_gemv, sparse_linear  # noqa: E402

import rsparse.bench as bench  # noqa: E402

import decode  # noqa: E402

probe_path, rest = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
fresh_in_capture = []
_workspace = compact_gemv._workspace


def counting_workspace(device, numel):
    buf = compact_gemv._WORKSPACE.get((device.type, device.index))
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing() and (buf is None or buf.numel() < numel):
        fresh_in_capture.append(numel)
    return _workspace(device, numel)


compact_gemv._workspace = counting_workspace

decoders = []
_Decoder, _decode_speed = bench._Decoder, bench.decode_speed


class RecordedDecoder(_Decoder):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        decoders.append(self)


@torch.no_grad()
def isolated_steps(run, batch_size, prompt_len, n=32) -> dict:
    """Host and GPU time of single decode steps issued one at a time on an idle GPU."""
    device = next(run.model.parameters()).device
    cuda = device.type == "cuda"
    vocab = run.model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    tok = run.prefill(prompt)
    host, gpu = [], []
    for _ in range(n):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        if cuda:
            start.record()
        tok = run.step(tok)
        if cuda:
            end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            torch.cuda.synchronize()
            gpu.append(start.elapsed_time(end))
    return {"host_ms": statistics.median(host), "gpu_alone_ms": statistics.median(gpu) if gpu else None,
            "host_ms_all": host}


def probing_decode_speed(model, **kw):
    decoders.clear()
    r = _decode_speed(model, **kw)
    if decoders:
        r["isolated_step"] = isolated_steps(decoders[-1], kw.get("batch_size", 1), kw.get("prompt_len", 128),
                                            min(32, kw.get("new_tokens", 256) - 1))
        print(f"  isolated step: host {r['isolated_step']['host_ms']:.3f} ms, GPU alone "
              f"{r['isolated_step']['gpu_alone_ms']} ms", flush=True)
    # Let this row's decoder and static cache go now: held until the next row's baseline, they made
    # that row's peak memory read low (decode run 24 in NOTES).
    decoders.clear()
    return r


bench._Decoder, bench.decode_speed = RecordedDecoder, probing_decode_speed


def specialisations() -> dict:
    out = {}
    for mod in (compact_gemv, sparse_linear):
        for name, fn in vars(mod).items():
            if not isinstance(fn, triton.runtime.jit.JITFunction):
                continue
            for device, entry in getattr(fn, "device_caches", {}).items():
                for key, kernel in entry[0].items():
                    meta = getattr(kernel, "metadata", None)
                    out.setdefault(f"{mod.__name__}.{name}", []).append({
                        "device": str(device), "key": str(key)[:2000],
                        "n_regs": getattr(kernel, "n_regs", None), "n_spills": getattr(kernel, "n_spills", None),
                        "num_warps": getattr(meta, "num_warps", None), "num_stages": getattr(meta, "num_stages", None),
                    })
    return out


sys.argv = [decode.__file__, *rest]
try:
    decode.main()
finally:
    ws = compact_gemv._WORKSPACE
    Path(probe_path).write_text(json.dumps({
        "argv": rest, "fresh_workspace_in_capture": fresh_in_capture,
        "workspace_numel": {str(k): v.numel() for k, v in ws.items()}, "retired_workspaces": len(compact_gemv._RETIRED),
        "specialisations": specialisations(),
    }, indent=1))
