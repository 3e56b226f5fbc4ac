#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 66, three calls of about 8-9 minutes each, either card (the acceptance
# names the H200; runs 61-65 all got an H100), in order of need; everything lands in one archive in $OUT.
#   accept: one_token_lowrank.py with "byte_rows" and "byte_rows_z" (the packed low-rank rows, and the z items, a
#           byte row at a time; rule in the script) and their GPU switch tests; then one_token_configs.py on gate/up
#           alone at 70, 80 and 90 %, rho 1 (acceptance 2's 70 % row: the compact path read 2.02-2.06x on the H100,
#           the split-K launch forced 2.14x in run 64); a probe of "byte_rows_z" with wider z tiles on gate/up
#           (informs only); then the acceptance rows (0 / 50 / 70 %, rho 1, batch 1 and 4, cuBLAS on same-size
#           slices) and the rho 0.8 rows at 50 %.
#           Rule for the configs, written before the run: gate/up-shaped single layers without rank
#           (COMPACT_MIN_ELEMENTS <= n * m_total < WIDE_COMPACT_MIN_ELEMENTS, n < 2 * m_total) leave the compact path
#           for the split-K launch if `splitk` beats `shipped` on all three rows; if one of the other split-K configs
#           beats both `shipped` and `splitk` on all three rows, it becomes that launch's config.  Otherwise nothing
#           changes.  The compact variants only inform.
#   decode: fold_ab.py at target 0.5, rho 0.8, bf16 factors: kernel run 64's limits in a whole compiled decode step,
#           where the compact path folds the norm and the split-K launch with a rank takes a small norm launch
#           first.  Rule, written before the run: RANKED_COMPACT_MAX_ACTIVE goes back to the earlier limits
#           ({"pair": 0.55, "single": 0.35}) if `ranked compact` is faster than both `shipped` rows; otherwise it
#           stays.  Then the decode at targets 0, 0.5 and 0.7, batch 1, compiled.
#   grid:   the other rows (40 and 90 %, rho 1 and 0.8, batch 1 and 4, all seven shapes).
#     LIMIT=570 bash benchmarks/next_device_call.sh accept      # on the device, from the repository root
#     LIMIT=570 bash benchmarks/next_device_call.sh decode
#     LIMIT=400 bash benchmarks/next_device_call.sh grid
case "$1" in accept|decode|grid) ;; *) echo "expected 'accept', 'decode' or 'grid', got '$1'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run66_$1; rm -rf $O; mkdir -p $O
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
  step 120 byte_rows.log python benchmarks/ablations/one_token_lowrank.py --out $O
  step 90 gpu_byte_rows.log python -m pytest -v -rfEs -m gpu tests/test_packed_kernels.py -k "switches and byte_rows"
  SK=path=splitk,block_k=8,block_m=1024,num_warps=4
  step 100 configs.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.7 0.8 0.9 \
    --config splitk=$SK,programs_per_sm=4 --config splitk_6=$SK,programs_per_sm=6 \
    --config splitk_k16=path=splitk,block_k=16,block_m=1024,programs_per_sm=4,num_warps=4 \
    --config compact_prefetch2=path=compact,block_k=8,block_m=512,programs_per_sm=8,num_warps=2,prefetch=2 \
    --config compact_1024=path=compact,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,prefetch=1 --out $O
  # informs only: "byte_rows_z" with wider z tiles on gate/up (offline sm_90, instructions per z element: 23 at the
  # shipped 16 x 128, 15 at 8 x 256, 10.5 at 8 x 512, all 80 registers); same channels per z item (128)
  ZC=block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1
  step 60 ztiles.log python benchmarks/ablations/one_token_configs.py --cases gate/up --sparsities 0.5 --rho 0.8 \
    --factor-bits 4 --switch PACKED_LEVELS=byte_rows_z --config z8x256=$ZC,block_kz=8,block_r=256,z_steps=16 \
    --config z8x512=$ZC,block_kz=8,block_r=512,z_steps=16 --out $O/ztiles
  step 150 acc.log $K "qkv fused + o" --same-bytes --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 4 --out $O/acc
  step 50 rho08.log $K "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08
elif [ "$1" = decode ]; then
  step 250 ranked.log python benchmarks/ablations/fold_ab.py --targets 0.5 --rho 0.8 --factor-bits 16 \
    --variants shipped "ranked compact" shipped --out $O/ranked.json
  step 300 decode.log python benchmarks/decode.py --targets 0 0.5 0.7 --batches 1 --prompts 128 --modes compiled \
    --new-tokens 128 --repeats 2 --time-limit 280 --out $O
else
  step 380 grid.log $K "qkv fused + o" "q/o" "k/v" --sparsities 0.4 0.9 --rhos 1 0.8 --factor-bits 16 --batches 1 4 --out $O/grid
fi
tar czf $OUT/run66_$1.tgz -C /tmp run66_$1
cat $O/steps.log
