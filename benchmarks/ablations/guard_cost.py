"""Diagnostic (decode run 23, CPU): what dynamo's guards cost per compiled decode step, dense against sparse.

Run 23 found the sparse decode step's host time on the H200 machine mostly in the call that evaluates the guards of
the compiled forward. Here a tiny Llama (hidden 64) with ``LAYERS`` decoder layers is compiled with a backend that
does no work; then the compiled frame's guard tree is evaluated alone (`check` on the frame's own locals), 200 times
per trial, best and median of 7 trials, for the dense model, the sparsified one (0.5, uniform, fused groups) and the
sparsified one without fusion; ``--skip-module-guards`` compiles with
``guard_filter_fn=torch.compiler.skip_guard_on_all_nn_modules_unsafe`` (no guards on the modules' attributes and
tensors: unsafe if the model changes after compiling). It also counts the tensors the guards check (parameters and buffers).

    PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 python benchmarks/ablations/guard_cost.py [LAYERS] [--skip-module-guards]
"""
import statistics
import sys
import time

import torch
import transformers as tf

import rsparse
from rsparse.bench import _Decoder, _static_cache
from rsparse.fuse import set_fusion


def build(variant: str, layers: int):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    if variant != "dense":
        rsparse.sparsify(model, 0.5, calibration=torch.randint(0, 256, (4, 32)), search="none", show_progress=False)
        set_fusion(model, variant == "sparse")
    return model


def no_work(gm, example_inputs):
    outputs = gm(*example_inputs)
    return lambda *args: outputs


@torch.no_grad()
def guard_ms(variant: str, layers: int, skip_module_guards: bool = False) -> tuple[float, float, int]:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    torch._dynamo.reset()
    model = build(variant, layers)
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe} if skip_module_guards else None
    step = torch.compile(model, fullgraph=True, backend=no_work, options=options)
    run = _Decoder(model, step, _static_cache(model, 64))
    tok = run.prefill(torch.randint(0, 256, (1, 16)))
    for _ in range(3):
        tok = run.step(tok)
    forward = type(model).forward  # the compiled frame: transformers' outermost wrapper of forward
    (entry,) = _debug_get_cache_entry_list(forward.__code__)
    kw = {run.cache_kw: run.cache, "use_cache": True, "position_ids": run.pos.unsqueeze(0)}
    if run.pass_cache_position:
        kw["cache_position"] = run.pos
    f_locals = {"args": (model, tok), "kwargs": kw}
    f_locals.update(zip(forward.__code__.co_freevars, (c.cell_contents for c in forward.__closure__ or ())))
    if not entry.guard_manager.check(f_locals):
        raise RuntimeError(f"the guards reject the frame's locals: {entry.guard_manager.check_verbose(f_locals).verbose_code_parts}")
    trials = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(200):
            entry.guard_manager.check(f_locals)
        trials.append((time.perf_counter() - t0) / 200 * 1e3)
    tensors = len([*model.parameters(), *model.buffers()])
    return min(trials), statistics.median(trials), tensors


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    layers = int(numbers[0]) if numbers else 32
    for variant in ("dense", "sparse", "sparse, no fusion"):
        best, median, tensors = guard_ms(variant, layers, "--skip-module-guards" in sys.argv)
        print(f"{variant:>18}: guard check {best:.3f} ms best, {median:.3f} median; {tensors} parameters and buffers",
              flush=True)
