#!/usr/bin/env bash
# The next device call, ready to run (each session that plans it rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 64, one call of about 9 minutes, either card; everything lands in one
# archive in $OUT (a call returns at most 8 files).
#   accept: wide_lowrank_path.py (RANKED_COMPACT_MAX_ACTIVE: the compact path against the split-K launch with z
#           items for wide layers with a rank, the pair at 50 / 60 / 70 %, gate/up alone at 60 / 70 %, and rho 1 on
#           the split-K launch; adoption rule in the script), the rho 0.8 acceptance rows at 50 %, then the GPU
#           tests of test_packed_kernels.py (LR_AFTER_WAVE removed from the launch) and test_kernels.py.
#   rule:   kernel run 65, after adopting run 64's limits: the GPU test of the fused pair with a rank on both
#           paths, and the rho 1 / 0.8 rows at 50 % of gate+up and q/k/v + o (acceptance 3).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=200 bash benchmarks/next_device_call.sh rule
case "$1" in accept|rule) ;; *) echo "expected 'accept' or 'rule', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
RUN=$([ "$1" = accept ] && echo 64 || echo 65)
O=/tmp/run${RUN}_$1; rm -rf $O; mkdir -p $O
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
  step 150 wide.log python benchmarks/ablations/wide_lowrank_path.py --out $O
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  step 200 gpu_packed.log python -m pytest -v -rfEs -m gpu tests/test_packed_kernels.py
  step 300 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
else
  step 90 gpu_pair.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k fused_gate_up_with_a_rank
  step 80 rho.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate+up "qkv fused + o" \
    --sparsities 0.5 --rhos 1 0.8 --factor-bits 16 --batches 1 --out $O/rho
fi
tar czf $OUT/run${RUN}_$1.tgz -C /tmp run${RUN}_$1
cat $O/steps.log
