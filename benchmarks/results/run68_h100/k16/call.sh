#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 68, either card (the acceptance names the H200; runs 61-67 all got an
# H100); everything lands in one archive in $OUT.  Run 67's calls, with their rules, are in
# benchmarks/results/run67_h100/{probe,bench,splitk}/call.sh.
#   k16:    16-row split-K steps for gate/up-shaped single layers without rank at 25-45 % active
#           (`SINGLE_TALL_STEPS_MAX_ACTIVE` = 0.45, a limit drawn after runs 66-67, where 16-row steps tied 8-row
#           ones at 50 % and won at 60 and 70 % in all five rows; shipped off, 0, because the session that built it
#           had no device time left).  Rule, written before the run: the setting becomes 0.45 if, in
#           one_token_configs.py with it, `shipped` beats `k8` (the tiles without it) at 60, 65 and 70 %, and
#           test_gpu_sixteen_row_steps_of_single_wide_layers_match_the_reference passes; otherwise it stays 0 and
#           the code goes.  Then gate/up's acceptance rows (50 / 70 %, batch 1, cuBLAS on same-size slices) with it,
#           and sweep_inline.py's "dot68" set: batch-4 tensor-core tiles with 8 warps or a fourth stage, gate/up and
#           down at 50 and 0 % (its rule is written above VARIANTS_DOT68).
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests of test_kernels.py; for an H200 first of all
#           (no H200 has run since kernel run 60).
#   cli:    the user's default path (cli_gpu_check.sh: sparsify with searched budgets and 4-bit factors, save,
#           summary, bench of the reloaded folder), last timed in run 63 (1.03x) before "byte_rows_z" shipped.
#     LIMIT=260 bash benchmarks/next_device_call.sh k16        # on the device, from the repository root
#     LIMIT=570 bash benchmarks/next_device_call.sh accept
#     LIMIT=560 bash benchmarks/next_device_call.sh cli
case "$1" in k16|accept|cli) ;; *) echo "expected 'k16', 'accept' or 'cli', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run68_$1; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
K="python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up"
if [ "$1" = k16 ]; then
  ON=SINGLE_TALL_STEPS_MAX_ACTIVE=0.45
  step 60 gpu_k16.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k sixteen_row
  step 50 configs.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.6 0.65 0.7 \
    --switch $ON --config k8=path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1 --out $O
  step 40 acc.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up --same-bytes --switch $ON \
    --sparsities 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 --out $O/acc
  step 110 dot68.log python benchmarks/sweep_inline.py --variants dot68 --batch 4 --sparsities 0.5 0 --reps 20 \
    --cases "gate/up 4096->14336" "down 14336->4096" --limit 100 --out $O
elif [ "$1" = cli ]; then
  step 550 cli.log env OUT=$O bash benchmarks/cli_gpu_check.sh
else
  step 80 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  step 120 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
  step 280 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
fi
tar czf $OUT/run68_$1.tgz -C /tmp run68_$1
cat $O/steps.log
