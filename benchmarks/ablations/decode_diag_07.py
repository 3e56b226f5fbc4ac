"""Diagnostic (decode run 22): why `decode.py` times target 0.7 at 3.33 ms/token while `profile_decode.py` times it
at 3.03 on the same code. One process, one sparsified copy (uniform 0.7, Triton backend), profiled several ways:

    PYTHONPATH=$PWD/src python3 benchmarks/ablations/decode_diag_07.py 0.7 out.json [--dense-first]

(a) `profile_decode`'s harness as is (static cache of prompt + 3 x steps + 16 positions); (b) the same with the cache
`decode.py` uses (prompt + 256 positions); (c) `decode.py`'s `decode_speed` timing; (d) after `decode.py`'s eager
`kept_fraction` pass, (b) and (c) again; ``--dense-first`` times the dense model's compiled row first, as `decode.py`
does. Each prints ms/token and the median µs of the rsparse launches by position. Results: NOTES.md, decode run 22
(every form read 3.01-3.09 ms, i.e. the slow mode of `decode.py` was not reproduced here).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
import rsparse  # noqa: E402
from rsparse.bench import decode_speed  # noqa: E402

from decode import build_dense, kept_fraction, sparsify_copy  # noqa: E402
from profile_decode import profile_variant  # noqa: E402

target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.7
args = argparse.Namespace(model=None, tiny=False, device="cuda", dtype=torch.bfloat16, shape="llama3-8b", layers=None,
                          attn="sdpa")
dense = build_dense(args)
model, _ = sparsify_copy(dense, target, "cuda")
rsparse.set_backend("triton")
out = {}


def prof(name, **kw):
    t0 = time.perf_counter()
    r = profile_variant(model, 50, 128, **kw)
    pos = ", ".join(f"{b['position']}:{b['name'][:8]} {b['median_us']:.2f}" for b in r["rsparse_by_position_in_layer"])
    print(f"{name}: {r['ms_per_token_events']:.3f} ms/token; busy {r['busy_us_per_step']:.0f} idle "
          f"{r['idle_us_per_step']:.0f} µs/step; {pos} ({time.perf_counter() - t0:.0f}s)", flush=True)
    out[name] = r


def timed(name):
    r = decode_speed(model, batch_size=1, prompt_len=128, new_tokens=256, compile=True, repeats=3)
    print(f"{name}: decode_speed {r['ms_per_token']:.3f} ms/token {[round(x, 3) for x in r['ms_per_token_runs']]}", flush=True)
    out[name] = r


if "--dense-first" in sys.argv:  # decode.py's order: the dense model's compiled row first
    r = decode_speed(dense, batch_size=1, prompt_len=128, new_tokens=256, compile=True, repeats=3)
    print(f"dense first: decode_speed {r['ms_per_token']:.3f} ms/token", flush=True)
    timed("c0 decode_speed right after dense")
prof("a profile, cache 294")
prof("b profile, cache 384", cache_len=384)
timed("c decode_speed")
rsparse.set_backend("auto")
print(f"kept fraction {kept_fraction(model, 'cuda'):.3f}", flush=True)
rsparse.set_backend("triton")
prof("d1 profile after kept_fraction, cache 384", cache_len=384)
timed("d2 decode_speed after kept_fraction")
prof("e profile, cache 294 again")
dest = sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "/tmp/diag07.json"
Path(dest).write_text(json.dumps(out, indent=1, default=str))
