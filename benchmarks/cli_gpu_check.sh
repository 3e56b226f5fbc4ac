#!/usr/bin/env bash
# The user's path on a GPU, end to end (decode notes, run 14): a random-weight Llama-3-8B-shaped
# model saved with save_pretrained, `rsparse sparsify` with the default settings (self-generated
# calibration, searched budgets), `rsparse summary`, and `rsparse bench` on the reloaded folder.
#     bash benchmarks/cli_gpu_check.sh        # on a CUDA machine, from the repository root; writes to $OUT
set -e
export PYTHONPATH=$PWD/src
python3 - <<'PY'
import torch, transformers as tf, sys
sys.path.insert(0, "benchmarks")
from decode import LLAMA3_8B
torch.manual_seed(0)
with torch.device("cuda"):
    m = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**LLAMA3_8B), dtype=torch.bfloat16)
m.save_pretrained("/tmp/llama8b")
print("saved")
PY
S=$(date +%s)
python3 -m rsparse sparsify /tmp/llama8b --target 0.5 --device cuda --out /tmp/s50 2>&1 | grep -v "Warning\|warn" | tail -5
echo "sparsify wall $(( $(date +%s) - S )) s"
python3 -m rsparse summary /tmp/s50 --json > $OUT/summary_s50.json
python3 -m rsparse bench /tmp/s50 --device cuda --json | tee $OUT/bench_s50.json
# The same random model sparsified in memory with uniform budgets (every layer at 0.5, rho 1), same harness.
python3 -m rsparse bench /tmp/llama8b --target 0.5 --search none --device cuda --json | tee $OUT/bench_uniform50.json
