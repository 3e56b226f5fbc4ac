#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 67, either card (the acceptance names the H200; runs 61-66 all got an
# H100); everything lands in one archive in $OUT.
#   probe:  one_token_configs.py on gate/up alone (4096 -> 14336, no rank, one token) at 50-80 %, and on the
#           gate+up pair at 50 and 70 % (informs only).  Kernel run 66 (H100): at 70 % the split-K launch with
#           16-row steps read 19.60 us (2.22x) against 21.04 for the shipped compact path and 20.11 for 8-row steps;
#           at 80 and 90 % the compact path won (14.84 / 10.65 against 17.29 / 15.42), and compact tiles of 1024
#           columns at 4 programs per multiprocessor beat the shipped ones at 70, 80 and 90 % (20.25 / 14.65 / 10.28).
#           Rules, written before the run, for gate/up-shaped single layers without rank
#           (COMPACT_MIN_ELEMENTS <= n * m_total < WIDE_COMPACT_MIN_ELEMENTS, n < 2 * m_total), one token:
#           R1: their split-K launch takes 16-row steps if `splitk_k16` beats `splitk` at 50 and 60 % (there the
#               shipped launch is the split-K one with 8-row steps); B is the better of the two from here on.
#           R2: their compact tiles become `compact_1024`'s if it beats `shipped` at 75 and 80 % (it did at 70, 80
#               and 90 % in run 66); C is the compact variant so chosen.
#           R3: their compact limit becomes the largest active share a in {0.30, 0.25, 0.20} such that C beats B at
#               sparsity 1 - a and at every sparser point of {70, 75, 80 %}; 0.10 if C beats B at none of them.
#               (Shipped: COMPACT_MAX_ACTIVE 0.35 for them.)
#   bench:  after the rules: the acceptance rows, the rho 0.8 rows, the 40 / 90 % grid (all seven shapes), and
#           one_token_lowrank.py (the shipped packed levels against the others).
#   tests:  the GPU tests of test_packed_kernels.py and test_kernels.py (the shipped packed levels and one-token
#           configs changed).
#   splitk: (after probe, bench and tests ran) one_token_configs.py on gate/up alone at 50, 60 and 70 %, where it takes
#           the split-K launch since run 67's probe, against other split-K tiles (the H200 sweep that chose the
#           shipped 8 x 1024 at 4 programs per multiprocessor ran at 50 % only; run 67's bench read 2.19x at 70 %,
#           equal to cuBLAS on a slice of the same bytes).  Rule, written before the run: a config replaces the
#           shipped tiles of gate/up-shaped single layers without rank (one token, split-K) if it is at least 1 %
#           faster than `shipped` at each of the three points; of several, the lowest sum.
#           Run 67 (splitk): none held; 16-row steps tied at 50 % (25.46 / 25.47 us) and won at 60 and 70 %.
#   k16:    kernel run 68: 16-row split-K steps for gate/up-shaped single layers without rank at 25-45 % active
#           (SINGLE_TALL_STEPS_MAX_ACTIVE = 0.45, a limit drawn after runs 66-67; shipped off, 0, because the session
#           that built it had no device time left).  Rule, written before the run: the setting becomes 0.45 if, in
#           one_token_configs.py with it, `shipped` beats `k8` (the tiles without it) at 60, 65 and 70 %, and
#           test_gpu_sixteen_row_steps_of_single_wide_layers_match_the_reference passes; otherwise it stays 0 and
#           the code goes.  Then gate/up's acceptance rows (50 / 70 %, batch 1, cuBLAS on same-size slices) with it.
#     LIMIT=200 bash benchmarks/next_device_call.sh probe        # on the device, from the repository root
#     LIMIT=330 bash benchmarks/next_device_call.sh bench
#     LIMIT=500 bash benchmarks/next_device_call.sh tests
#     LIMIT=120 bash benchmarks/next_device_call.sh splitk
#     RUN=8 LIMIT=150 bash benchmarks/next_device_call.sh k16
case "$1" in probe|bench|tests|splitk|k16) ;; *) echo "expected probe, bench, tests, splitk or k16, got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run6${RUN:-7}_$1; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
K="python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up"
if [ "$1" = probe ]; then
  SK=path=splitk,block_m=1024,num_warps=4,programs_per_sm=4,num_stages=1
  C1024=path=compact,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,prefetch=1
  step 120 configs.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.5 0.6 0.7 0.75 0.8 \
    --config splitk=$SK,block_k=8 --config splitk_k16=$SK,block_k=16 --config compact_1024=$C1024 --out $O/single
  step 60 pair.log python benchmarks/ablations/one_token_configs.py --cases gate+up --sparsities 0.5 0.7 \
    --config splitk_k16=$SK,block_k=16 --config compact_1024=$C1024 --out $O/pair
elif [ "$1" = bench ]; then
  step 80 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 40 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
  step 120 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
  step 100 lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
elif [ "$1" = splitk ]; then
  SK=path=splitk,num_stages=1
  step 100 configs.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.5 0.6 0.7 \
    --config k16=$SK,block_k=16,block_m=1024,programs_per_sm=4,num_warps=4 \
    --config pps5=$SK,block_k=8,block_m=1024,programs_per_sm=5,num_warps=4 \
    --config pps3=$SK,block_k=8,block_m=1024,programs_per_sm=3,num_warps=4 \
    --config m2048w8=$SK,block_k=8,block_m=2048,programs_per_sm=2,num_warps=8 \
    --config m512w2=$SK,block_k=8,block_m=512,programs_per_sm=8,num_warps=2 \
    --config acc2d=$SK,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,acc2d=1 --out $O
elif [ "$1" = k16 ]; then
  step 60 gpu_k16.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k sixteen_row
  ON=SINGLE_TALL_STEPS_MAX_ACTIVE=0.45
  step 50 configs.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.6 0.65 0.7 \
    --switch $ON --config k8=path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1 --out $O
  step 40 acc.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up --same-bytes --switch $ON \
    --sparsities 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 --out $O/acc
else
  step 200 gpu_packed.log python -m pytest -v -rfEs -m gpu tests/test_packed_kernels.py
  step 280 gpu_kernels.log python -m pytest -v -rfEs -m gpu tests/test_kernels.py
fi
tar czf $OUT/run6${RUN:-7}_$1.tgz -C /tmp run6${RUN:-7}_$1
cat $O/steps.log
