#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 71, either card (the acceptance names the H200; runs 61-70 all got an
# H100); everything lands in one archive in $OUT.  Runs 69-70's calls are in benchmarks/results/run69_h100/*/call.sh
# and benchmarks/results/run70_h100/dot8/call.sh.
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests; for an H200 first of all (no H200 has run
#           since kernel run 60).
#   few:    the token limit of the 8-warp batch tiles (DOT_DENSE_WIDE_MIN_TOKENS = 4, drawn after run 70, 3 tokens
#           untimed): sweep_inline.py's "dot70" set at 3 and 2 tokens, 50 %; then the GPU tests of the batched
#           launches with the split in place. Rule, written before the run: if at 3 tokens the faster 8-warp sum
#           over the four cases is at least 1 % below the 4 warps', the limit becomes 3; otherwise it stays.
#           Also the "dot71" set (Config.every_row: batch row loads without the union mask) at batch 4, 50 and 0 %,
#           and batch 8, 50 %; its rule is written above VARIANTS_DOT71.
#   zero:   the group rule of RSparseLinear.takes_kernel (forty-second session: a layer that keeps every channel
#           takes its shared-input group's launch for batches too), in a whole compiled decode at target 0, batch 4:
#           once as shipped (rows dense, 0, 0 forced onto the kernel) and once with --no-fuse (no groups, so every
#           batch of a full layer on the GEMM, as before the rule); then the GPU test of the full member. Rule,
#           written before the run: the group rule stays if the "0" row's speed-up over its process's dense row is
#           at least 1 % higher with groups than without; otherwise batches of full layers go back to the GEMM.
# On an H200 run `accept` first; on an H100 `few` and `zero` first (`accept` would repeat run 69's rows).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=300 bash benchmarks/next_device_call.sh few
#     LIMIT=570 bash benchmarks/next_device_call.sh zero
case "$1" in accept|few|zero) ;; *) echo "expected 'accept', 'few' or 'zero', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run71_$1; rm -rf $O; mkdir -p $O
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
  step 330 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
elif [ "$1" = zero ]; then
  D="python benchmarks/decode.py --targets 0 --batches 4 --prompts 128 --modes compiled"
  step 280 decode_groups.log $D --out $O/groups
  step 200 decode_nofuse.log $D --no-fuse --no-kernel-at-zero --out $O/nofuse
  step 80 gpu_fuse.log python -m pytest -v -rfEs -m gpu tests/test_fuse.py
else
  C=(--cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o")
  for b in 3 2; do
    mkdir -p $O/b$b; step 45 dot70_b$b.log python benchmarks/sweep_inline.py --variants dot70 --batch $b --sparsities 0.5 \
      --reps 20 "${C[@]}" --limit 35 --out $O/b$b
  done
  for b in 4 8; do
    sp=0.5; [ $b = 4 ] && sp="0.5 0"
    mkdir -p $O/e$b; step 45 dot71_b$b.log python benchmarks/sweep_inline.py --variants dot71 --batch $b --sparsities $sp \
      --reps 20 "${C[@]}" --limit 35 --out $O/e$b
  done
  step 120 gpu_batched.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k "batched_fused or kernel_matches"
fi
tar czf $OUT/run71_$1.tgz -C /tmp run71_$1
cat $O/steps.log
