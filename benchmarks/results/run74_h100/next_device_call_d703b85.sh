#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 74, either card (the acceptance names the H200; runs 61-73 all got an
# H100); everything lands in one archive in $OUT.  Runs 71-73's calls are in benchmarks/results/run7[123]_h100/*/call.sh.
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests; for an H200 first of all (no H200 has run
#           since kernel run 60).
#   rows:   the GPU tests that run 73 cut off (every_row in fp16, the batched launches, the full member), then the
#           two points below the every_row limit it did not finish, for the record (they move nothing: run 73's rule
#           kept the limit at 0.99): 4 tokens at 40 % (97.4 % kept) and 3 tokens at 30 % (97.3 %, 4 warps).
# On an H200 run `accept` first; on an H100 `rows` (`accept` would repeat run 69's rows).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=400 bash benchmarks/next_device_call.sh rows
MODE=$1
case "$MODE" in accept|rows) ;; *) echo "expected 'accept' or 'rows', got '$MODE'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run74_$MODE; rm -rf $O; mkdir -p $O
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
  step 240 gpu_rows.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py tests/test_fuse.py -k "every_row or batched_fused or full_member"
  for point in "dot72 4 0.4" "dot72few 3 0.3"; do
    set -- $point; v=$1 b=$2; shift 2
    mkdir -p $O/b${b}_$1; step 60 ${v}_b${b}_$1.log python benchmarks/sweep_inline.py --variants $v --batch $b --sparsities "$@" \
      --reps 20 "${C[@]}" --limit 50 --out $O/b${b}_$1
  done
fi
tar czf $OUT/run74_$MODE.tgz -C /tmp run74_$MODE
cat $O/steps.log
