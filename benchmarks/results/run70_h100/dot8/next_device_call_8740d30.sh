#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 70, either card (the acceptance names the H200; runs 61-69 all got an
# H100); everything lands in one archive in $OUT.  Run 69's calls are in benchmarks/results/run69_h100/*/call.sh.
#   dot8:   after run 69 made 8-warp tiles DOT_DENSE_CONFIG: sweep_inline.py's "dot70" set (8 against 4 warps at
#           55 / 60 % sparsity, batch 4, whose rule is written above VARIANTS_DOT70; batch 2 and 8 at 50 % for the
#           record), the batch-4 acceptance rows with the new tiles, then the GPU tests of test_kernels.py.
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests; for an H200 first of all (no H200 has run
#           since kernel run 60).
#     LIMIT=400 bash benchmarks/next_device_call.sh dot8      # on the device, from the repository root
#     LIMIT=570 bash benchmarks/next_device_call.sh accept
case "$1" in dot8|accept) ;; *) echo "expected 'dot8' or 'accept', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run70_$1; rm -rf $O; mkdir -p $O
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
else
  C=(--cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o")
  for b in 4 2 8; do
    sp="0.6 0.55"; [ $b != 4 ] && sp=0.5
    mkdir -p $O/b$b; step 60 dot70_b$b.log python benchmarks/sweep_inline.py --variants dot70 --batch $b --sparsities $sp \
      --reps 20 "${C[@]}" --limit 50 --out $O/b$b
  done
  step 60 acc4.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 4 --out $O/acc4
  step 280 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
fi
tar czf $OUT/run70_$1.tgz -C /tmp run70_$1
cat $O/steps.log
