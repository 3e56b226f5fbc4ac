#!/usr/bin/env bash
# The next device call, ready to run (each session that plans one rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 62, on an H200 (the card acceptance names): the acceptance rows with
# today's code (0 / 50 / 70 %, rho 1, batch 1 and 4, bf16, with cuBLAS on same-size slices), the rho 0.8 rows at 50 %
# (bf16 factors), the same-run check of the packed batches' z-item rule on gate/up (run 61 passed a wrong case name),
# then the rest of the grid (40 % and 90 %, rho 1 and 0.8) in what is left.  One archive in $OUT.
#     LIMIT=520 bash benchmarks/next_device_call.sh      # on the device, from the repository root
export PYTHONPATH=$PWD/src
O=/tmp/run62; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-520} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
K="python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up"
step 150 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
step 60 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 4 --out $O/rho08
step 60 dotz.log python benchmarks/ablations/dot_z_items.py --factor-bits 4 --cases "gate/up 4096->14336" --out $O
step 300 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
tar czf $OUT/run62.tgz -C /tmp run62
cat $O/steps.log
