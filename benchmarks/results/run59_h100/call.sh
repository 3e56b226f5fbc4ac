#!/usr/bin/env bash
# The next device call, ready to run (each session that plans one rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 59: the untimed one-token switches (PACKED_LEVELS, LOWRANK_AMONG_WEIGHTS),
# DOT_Z_ITEMS on q/k/v + o, the acceptance rows, and probes for gate/up at 70 % and at batch 4.  Steps run in order
# of need, each bounded by what is left of LIMIT seconds; everything lands in one archive in $OUT, since a call
# returns at most 8 files.
#     LIMIT=560 bash benchmarks/next_device_call.sh      # on the device, from the repository root
export PYTHONPATH=$PWD/src
O=/tmp/run59; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-560} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
step 150 one_token_lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
step 100 dotz_qkv.log python benchmarks/ablations/dot_z_items.py --factor-bits 4 --cases "qkv fused + o" --out $O
step 80 k1.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --same-bytes --cases gate/up down "gate+up" \
  "qkv fused + o" --sparsities 0.5 0.7 --rhos 1 --batches 1 4 --out $O/k1
step 40 k8.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down "gate+up" \
  "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 4 --batches 1 --out $O/k8
step 30 inline70.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up --sparsities 0.7 \
  --rhos 1 --batches 1 --gemv1 path=inline,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,prefetch=1 \
  --out $O/inline70
i=0
for cfg in block_k=32,block_m=256,programs_per_sm=3,num_warps=4,num_stages=4 \
           block_k=64,block_m=128,programs_per_sm=3,num_warps=4,num_stages=3 \
           block_k=32,block_m=512,programs_per_sm=2,num_warps=8,num_stages=3; do
  step 30 dot$i.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up --sparsities 0.5 \
    --rhos 1 --batches 4 --dot $cfg --out $O/dot$i
  i=$((i + 1))
done
tar czf $OUT/run59.tgz -C /tmp run59
cat $O/steps.log
