#!/usr/bin/env bash
# The next device call, ready to run (each session that plans one rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  Kernel run 60: PACKED_LEVELS "biased_rows" against the other level settings, with
# the adoption rule applied on the device copy before the rows that follow; packed batches' z items on the MLP's
# shapes (shipped since run 59's rule) against z in the weight items; the rho 0.8 rows; the GPU suite in four shards;
# the user's default path (cli_gpu_check.sh) in what is left.  (dot_z_items.py on gate/up, re-timing the new rule
# against z in the weight items, did not fit; run it when time allows.)
# Steps run in order of need, each bounded by what is left of LIMIT seconds; everything lands in one archive in
# $OUT, since a call returns at most 8 files.
#     LIMIT=560 bash benchmarks/next_device_call.sh      # on the device, from the repository root
export PYTHONPATH=$PWD/src
O=/tmp/run60; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-560} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
step 130 one_token_lowrank.log python benchmarks/ablations/one_token_lowrank.py --out $O
# Adoption rule (written before the run): "biased_rows" if it is faster than "convert" on all four cases.
python - $O/one_token_lowrank.jsonl > $O/adopt.log 2>&1 <<'PY'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
us = {(r["case"], r["variant"]): r["us"] for r in rows}
cases = sorted({r["case"] for r in rows})
win = len(cases) == 4 and all(us[(c, "4bit_biased_rows")] < us[(c, "4bit_convert")] for c in cases)
print({c: (us[(c, "4bit_convert")], us[(c, "4bit_biased_rows")]) for c in cases}, "adopt" if win else "keep")
if win:
    p = "src/rsparse/kernels/sparse_linear.py"
    s = open(p).read()
    open(p, "w").write(re.sub(r'^PACKED_LEVELS = "convert"$', 'PACKED_LEVELS = "biased_rows"', s, flags=re.M))
PY
grep -n '^PACKED_LEVELS' src/rsparse/kernels/sparse_linear.py >> $O/adopt.log
step 50 k8.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down "gate+up" \
  "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 4 --batches 1 4 --out $O/k8
left=$((END - SECONDS - 230))  # the suite's shards in parallel took 173-202 s in run 58; the rest is the CLI's
[ $left -gt 230 ] && left=230
if [ $left -gt 60 ]; then
  for i in 0 1 2 3; do timeout $left python -m pytest -q -m gpu tests/ --shard $i/4 > $O/gpu_suite_g$i.log 2>&1 & done
  wait
  echo "suite at $SECONDS s" >> $O/steps.log
else
  echo "skipped: the GPU suite" >> $O/steps.log
fi
# The user's path with the defaults (searched budgets, 4-bit factors) in what is left: sparsify, summary, bench.
left=$((END - SECONDS))
if [ $left -gt 150 ]; then
  OUT=$O timeout $left bash benchmarks/cli_gpu_check.sh > $O/cli.log 2>&1; echo "cli rc $? at $SECONDS s" >> $O/steps.log
else
  echo "skipped: cli_gpu_check.sh" >> $O/steps.log
fi
tar czf $OUT/run60.tgz -C /tmp run60
cat $O/steps.log $O/adopt.log; tail -n 1 $O/gpu_suite_g*.log
