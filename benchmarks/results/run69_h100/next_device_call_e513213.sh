#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 69, either card (the acceptance names the H200; runs 61-68 all got an
# H100); everything lands in one archive in $OUT.  Run 68's calls are in benchmarks/results/run68_h100/*/call.sh.
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests of test_kernels.py; for an H200 first of all
#           (no H200 has run since kernel run 60).
#   cli:    the user's default path (cli_gpu_check.sh: sparsify with searched budgets and 4-bit factors, save,
#           summary, bench of the reloaded folder), last timed in run 63 (1.03x) before "byte_rows_z" shipped.
#   b4:     sweep_inline.py's "dot69" set: batch-4 tensor-core tiles of 8 warps on all four acceptance cases at 50,
#           70 and 0 % (its rule is written above VARIANTS_DOT69; each row records its error against the reference).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=560 bash benchmarks/next_device_call.sh cli
#     LIMIT=140 bash benchmarks/next_device_call.sh b4
case "$1" in accept|cli|b4) ;; *) echo "expected 'accept', 'cli' or 'b4', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run69_$1; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
K="python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up"
if [ "$1" = accept ]; then
  step 80 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  step 120 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
  step 280 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
elif [ "$1" = cli ]; then
  step 550 cli.log env OUT=$O bash benchmarks/cli_gpu_check.sh
else
  step 120 dot69.log python benchmarks/sweep_inline.py --variants dot69 --batch 4 --sparsities 0.5 0.7 0 --reps 20 \
    --cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o" --limit 110 --out $O
fi
tar czf $OUT/run69_$1.tgz -C /tmp run69_$1
cat $O/steps.log
