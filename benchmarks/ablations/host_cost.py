"""Diagnostic (decode run 23): the host's cost of one compiled decode step, dense against sparse, and whether inductor's
freezing (parameters and buffers as constants of the graph instead of its inputs) lowers it.

Run 23 timed one isolated compiled step (GPU idle before it) at 0.9-1.5 ms of host time for the dense Llama-3-8B shape
and 1.5-3.2 ms for the sparse one at 0.7, whose GPU step takes 3.0 ms: a decode loop that does not synchronise runs at
max(host, GPU) per step, so the 0.7 row can be host-bound. Per model and setting: `decode_speed` (ms/token), then
64 single steps with the GPU synchronised between them, each step's host time (median) and a cProfile of the host side
(top functions by own time).

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/host_cost.py OUT.json [--tiny]
"""
import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
import rsparse  # noqa: E402
import rsparse.bench as bench  # noqa: E402

from decode import build_dense, sparsify_copy  # noqa: E402

tiny = "--tiny" in sys.argv
device = "cpu" if tiny else "cuda"
cuda = device == "cuda"
args = argparse.Namespace(model=None, tiny=tiny, device=device, dtype=torch.float32 if tiny else torch.bfloat16,
                          shape="llama3-8b", layers=2 if tiny else None, attn="sdpa")
new_tokens, prompt_len = (40, 16) if tiny else (256, 128)

decoders = []


class RecordedDecoder(bench._Decoder):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        decoders.append(self)


bench._Decoder = RecordedDecoder


def sync():
    if cuda:
        torch.cuda.synchronize()


@torch.no_grad()
def host_profile(run, n=64) -> dict:
    vocab = run.model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    tok = run.prefill(prompt)
    prof, host = cProfile.Profile(), []
    for _ in range(min(n, new_tokens - 1)):
        sync()
        t0 = time.perf_counter()
        prof.enable()
        tok = run.step(tok)
        prof.disable()
        host.append((time.perf_counter() - t0) * 1e3)
    sync()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    return {"host_ms": statistics.median(host), "host_ms_all": host, "profile": s.getvalue()}


dense = build_dense(args)
sparse, _ = sparsify_copy(dense, 0.7, device)
out = []
for freezing in (False, True):
    for name, model in (("dense", dense), ("0.7", sparse)):
        torch._inductor.config.freezing = freezing
        rsparse.set_backend("triton" if name != "dense" and cuda else "auto")
        decoders.clear()
        row = {"variant": name, "freezing": freezing}
        try:
            r = bench.decode_speed(model, batch_size=1, prompt_len=prompt_len, new_tokens=new_tokens, compile=True,
                                   repeats=3)
            row.update(ms_per_token=r["ms_per_token"], runs=r["ms_per_token_runs"], peak_mb=r["peak_memory_mb"],
                       graphs=r["graphs_compiled"], breaks=r["graph_breaks"])
            row.update(host_profile(decoders[-1]))
            print(f"{name} freezing={freezing}: {r['ms_per_token']:.3f} ms/token, host per isolated step "
                  f"{row['host_ms']:.3f} ms", flush=True)
            print(row["profile"][:4000], flush=True)
        except Exception as e:  # keep the other settings
            row["error"] = f"{type(e).__name__}: {e}"[:800]
            print(f"{name} freezing={freezing}: {row['error']}", flush=True)
        out.append(row)
        Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
rsparse.set_backend("auto")
