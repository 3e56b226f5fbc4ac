#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 76, either card (the acceptance names the H200; runs 61-75 all got an
# H100); everything lands in one archive in $OUT.  Run 75's call is in benchmarks/results/run75_h100/tiles/call.sh.
#   accept: the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices), the rho 0.8 rows,
#           the 40 / 90 % grid (all seven shapes), then the GPU tests; for an H200 first of all (no H200 has run
#           since kernel run 60).
#   tiles:  a fourth stage and 64-row steps with 16 warps against the shipped batch tiles at batch 4 ("dot76" at 50 %,
#           masked loads; "dot76er" at 0 %, every row); the rule is written above VARIANTS_DOT76 in sweep_inline.py.
#   suite:  the whole GPU test suite in four shards in parallel (last whole in kernel run 61, 359-390 s a shard on an
#           H100; since then the batch tiles, every_row and the group launches changed).
# On an H200 run `accept` first; on an H100 `tiles`, then `suite` (`accept` would repeat run 69's rows).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=300 bash benchmarks/next_device_call.sh tiles
#     LIMIT=570 bash benchmarks/next_device_call.sh suite
MODE=$1
case "$MODE" in accept|tiles|suite) ;; *) echo "expected 'accept', 'tiles' or 'suite', got '$MODE'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run76_$MODE; rm -rf $O; mkdir -p $O
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
elif [ "$MODE" = suite ]; then
  left=$((END - SECONDS - 20))
  for i in 0 1 2 3; do timeout $left python -m pytest -q -rfEs -m gpu tests/ --shard $i/4 > $O/gpu_suite_g$i.log 2>&1 & done
  wait
  echo "suite at $SECONDS s" >> $O/steps.log
else
  C=(--cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o")
  for point in "dot76 0.5" "dot76er 0"; do
    set -- $point; v=$1
    mkdir -p $O/$v; step 140 $v.log python benchmarks/sweep_inline.py --variants $v --batch 4 --sparsities $2 \
      --reps 20 "${C[@]}" --limit 130 --out $O/$v
  done
fi
tar czf $OUT/run76_$MODE.tgz -C /tmp run76_$MODE
cat $O/steps.log
