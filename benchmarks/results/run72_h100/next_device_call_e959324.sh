#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 72, either card (the acceptance names the H200; runs 61-71 all got an
# H100); everything lands in one archive in $OUT.  Run 71's calls are in benchmarks/results/run71_h100/*/call.sh.
#   rows:   the limit of Config.every_row (sparse_linear.EVERY_ROW_MIN_UNION, drawn after run 71: batch tiles read
#           every row of a step where the tokens together are expected to keep at least 99 % of the rows).
#           sweep_inline.py's "dot72few" at 2 and 3 tokens (0 %), "dot72" at 4 (0 %), 5 (40 %), 6 (50 and 40 %),
#           7 and 8 (50 %); the rule is written above VARIANTS_DOT72. Then the GPU tests of every_row and of the
#           batched launches, and, for the record, the whole compiled decode at target 0, batch 4 (run 71: 1.08x).
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests; for an H200 first of all (no H200 has run
#           since kernel run 60).
# On an H200 run `accept` first; on an H100 `rows` (`accept` would repeat run 69's rows).
#     LIMIT=570 bash benchmarks/next_device_call.sh rows      # on the device, from the repository root
#     LIMIT=570 bash benchmarks/next_device_call.sh accept
MODE=$1
case "$MODE" in accept|rows) ;; *) echo "expected 'accept' or 'rows', got '$MODE'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run72_$MODE; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
K="python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up"
if [ "$MODE" = accept ]; then
  step 80 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  step 120 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
  step 330 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
else
  C=(--cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o")
  for point in "dot72few 2 0" "dot72few 3 0" "dot72 4 0" "dot72 8 0.5" "dot72 7 0.5" "dot72 6 0.5 0.4" "dot72 5 0.4"; do
    set -- $point; v=$1 b=$2; shift 2
    mkdir -p $O/b$b; step 60 ${v}_b$b.log python benchmarks/sweep_inline.py --variants $v --batch $b --sparsities "$@" \
      --reps 20 "${C[@]}" --limit 50 --out $O/b$b
  done
  step 120 gpu_rows.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k "every_row or batched_fused"
  step 220 decode0.log python benchmarks/decode.py --targets 0 --batches 4 --prompts 128 --modes compiled --out $O/decode0
fi
tar czf $OUT/run72_$MODE.tgz -C /tmp run72_$MODE
cat $O/steps.log
