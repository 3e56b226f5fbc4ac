#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 63, three calls of about 8-9 minutes each, either card, in order of need;
# everything lands in one archive in $OUT (a call returns at most 8 files).
#   accept: wide_lowrank_path.py first (COMPACT_WITH_RANK: the compact path against the split-K launch with z items
#           for wide layers with a rank; rule in the script: off if split-K wins all three rows), one_token_lowrank.py
#           (LR_AFTER_WAVE: one token's low-rank items after the first wave; rule in the script), then the acceptance
#           rows with today's code (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size slices; at 0 % the
#           module now takes the kernel for one token), the rho 0.8 rows at 50 %, a split-K probe for gate/up at 70 %,
#           and the GPU tests of test_fuse.py (new: a full member in its group on CUDA) and test_packed_kernels.py.
#   decode: the whole decode at targets 0 and 0.5, batch 1, compiled, then eager in what is left (target 0 now runs
#           one token on the kernel: its rows should match "0 (kernel)").
#   cli:    the user's default path (cli_gpu_check.sh: sparsify with searched budgets and 4-bit factors, save,
#           summary, bench of the reloaded folder); runs 60 and 61 gave it 230-300 s and its bench never finished.
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=540 bash benchmarks/next_device_call.sh decode
#     LIMIT=570 bash benchmarks/next_device_call.sh cli
case "$1" in accept|decode|cli) ;; *) echo "expected 'accept', 'decode' or 'cli', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run63_$1; rm -rf $O; mkdir -p $O
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
  step 90 wide.log python benchmarks/ablations/wide_lowrank_path.py --out $O
  step 100 one_token_lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
  step 150 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  # probe: gate/up alone at 70 %, rho 1, on the split-K launch instead of the compact path (2.03x in run 62)
  step 30 splitk70.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up --sparsities 0.7 \
    --rhos 1 --batches 1 --gemv1 path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4 --out $O/splitk70
  step 120 gpu_tests.log python -m pytest -v -rfEs -m gpu tests/test_fuse.py tests/test_packed_kernels.py
elif [ "$1" = decode ]; then
  step 530 decode.log python benchmarks/decode.py --targets 0 0.5 --batches 1 --prompts 128 --modes compiled eager \
    --new-tokens 128 --repeats 2 --time-limit 500 --out $O
else
  step 560 cli.log env OUT=$O bash benchmarks/cli_gpu_check.sh
fi
tar czf $OUT/run63_$1.tgz -C /tmp run63_$1
cat $O/steps.log
