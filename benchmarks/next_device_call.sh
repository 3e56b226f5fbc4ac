#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 61, two calls of about 9 minutes each; everything lands in one archive
# in $OUT (a call returns at most 8 files).
#   suite: the GPU test suite in four shards (run 60 ran out of time after 132 of 172 tests on an H200, before any
#          of test_packed_kernels.py's GPU tests, and the packed levels by shape are not yet checked on a GPU),
#          then one_token_lowrank.py with the shipped levels by shape (`4bit_shipped`).
#   speed: the user's default path (cli_gpu_check.sh: sparsify, summary, bench of the reloaded folder, then the
#          uniform-budget bench), then the same-run check of the packed batches' z-item rule on gate/up
#          (dot_z_items.py: `shipped` against `z_in_weight_items`) and the rho 0.8 rows run 60 did not finish.
#     LIMIT=570 bash benchmarks/next_device_call.sh suite      # on the device, from the repository root
#     LIMIT=570 bash benchmarks/next_device_call.sh speed
case "$1" in suite|speed) ;; *) echo "expected 'suite' or 'speed', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run61_$1; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
if [ "$1" = suite ]; then
  left=$((END - SECONDS - 100))
  for i in 0 1 2 3; do timeout $left python -m pytest -q -rfEs -m gpu tests/ --shard $i/4 > $O/gpu_suite_g$i.log 2>&1 & done
  wait
  echo "suite at $SECONDS s" >> $O/steps.log
  step 100 one_token_lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
else
  step 330 cli.log env OUT=$O bash benchmarks/cli_gpu_check.sh
  step 70 dotz.log python benchmarks/ablations/dot_z_items.py --factor-bits 4 --cases gate/up --out $O
  step 90 k8.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down "gate+up" \
    "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 4 --batches 1 4 --out $O/k8
fi
tar czf $OUT/run61_$1.tgz -C /tmp run61_$1
cat $O/steps.log; tail -n 2 $O/gpu_suite_g*.log 2>/dev/null
