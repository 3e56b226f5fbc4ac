"""Greedy-token agreement on the GPU on a real model (issue 6, acceptance 2): SmolLM2-135M.

For fp32 and bf16: the dense model eager vs compiled (the baseline: how much compilation alone
moves greedy tokens), then the model sparsified at 0.5 with each backend, eager vs compiled, and
Triton vs torch. Reports the share of equal tokens and the first position that differs, for
64 greedy tokens after one prompt; JSON to ``--out``/smollm2_agreement.json.

    python benchmarks/smollm2_gpu_agreement.py --out benchmarks/results
"""

import argparse
import copy
import json
from pathlib import Path

import torch

import rsparse
from rsparse.bench import compile_decode_step, decode_tokens
from rsparse.eval import load_offline_model


def first_diff(a, b):
    ne = (a != b).nonzero()
    return int(ne[0, -1]) if len(ne) else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    args = p.parse_args()
    dense, tok = load_offline_model(torch.float32)
    dense = dense.cuda()
    sparse = copy.deepcopy(dense)
    calib = torch.randint(0, dense.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    rsparse.sparsify(sparse, 0.5, calibration=calib, show_progress=False)
    prompt = tok("The capital of France is a city that", return_tensors="pt").input_ids.cuda()
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes]:
        dense.to(dtype)
        sparse.to(dtype)
        toks = {}
        for name, model, backend in (("dense", dense, "auto"), ("triton", sparse, "triton"), ("torch", sparse, "torch")):
            rsparse.set_backend(backend)
            for compiled in (False, True):
                torch._dynamo.reset()
                step = compile_decode_step(model) if compiled else None
                toks[name, compiled] = decode_tokens(model, prompt, args.new_tokens, step=step)
        rsparse.set_backend("auto")
        pairs = [
            ("dense eager vs dense compiled", ("dense", False), ("dense", True)),
            ("triton eager vs triton compiled", ("triton", False), ("triton", True)),
            ("torch eager vs torch compiled", ("torch", False), ("torch", True)),
            ("triton eager vs torch eager", ("triton", False), ("torch", False)),
            ("triton compiled vs torch compiled", ("triton", True), ("torch", True)),
        ]
        for label, a, b in pairs:
            row = dict(dtype=str(dtype).removeprefix("torch."), pair=label,
                       agreement=(toks[a] == toks[b]).float().mean().item(), first_difference=first_diff(toks[a], toks[b]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, model="SmolLM2-135M-Instruct (Q4_1 dequantised)",
                target=0.5, calibration="4x64 random tokens", new_tokens=args.new_tokens, compile="inductor, reduce-overhead")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "smollm2_agreement.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
