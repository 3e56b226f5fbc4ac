#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 61, two calls of about 9 minutes each; everything lands in one archive
# in $OUT (a call returns at most 8 files).
#   suite: the GPU test suite in four shards (run 60 ran out of time after 132 of 172 tests on an H200, before any
#          of test_packed_kernels.py's GPU tests, and the packed levels by shape are not yet checked on a GPU),
#          then packed_lr_rows.py: one token's low-rank items at 0.25, 0.5 and 1 times the "density" rows, packed
#          and bf16 factors (shorter items were never timed; longer ones cost about a memory round trip per step).
#          Adoption rule, written before the run: for each factor kind, the scale that is fastest on all four cases
#          if it beats 1 on all four; else 1 stays.
#   speed: the user's default path (cli_gpu_check.sh: sparsify, summary, bench of the reloaded folder, then the
#          uniform-budget bench), then the same-run check of the packed batches' z-item rule on gate/up
#          (dot_z_items.py: `shipped` against `z_in_weight_items`), then one_token_lowrank.py: `Z_LAUNCH` (z in a
#          launch of its own, the low-rank items among the weight items) against the shipped levels by shape.
#          Adoption rule, written before the run: Z_LAUNCH on if `4bit_zlaunch` beats `4bit_shipped` on all four
#          cases and `bf16_zlaunch` beats `bf16` on the three where it applies (gate+up with bf16 factors takes the
#          compact path).
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
  left=$((END - SECONDS - 110))
  for i in 0 1 2 3; do timeout $left python -m pytest -q -rfEs -m gpu tests/ --shard $i/4 > $O/gpu_suite_g$i.log 2>&1 & done
  wait
  echo "suite at $SECONDS s" >> $O/steps.log
  step 100 lr_rows.log python benchmarks/ablations/packed_lr_rows.py --out $O
else
  step 300 cli.log env OUT=$O bash benchmarks/cli_gpu_check.sh
  step 60 dotz.log python benchmarks/ablations/dot_z_items.py --factor-bits 4 --cases gate/up --out $O
  step 120 one_token_lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
fi
tar czf $OUT/run61_$1.tgz -C /tmp run61_$1
cat $O/steps.log; tail -n 2 $O/gpu_suite_g*.log 2>/dev/null
