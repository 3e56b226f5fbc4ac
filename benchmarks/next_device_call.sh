#!/usr/bin/env bash
# The next device calls, ready to run (each session that plans them rewrites this file; benchmarks/NOTES.md says why
# and how to read the results).  The H200 part of run 78's plan, waiting since the forty-seventh session (calls for an
# H200 have landed on H100s or got no machine through the fifty-fifth, and none was lent in the fifty-sixth;
# results/run78_h100/ to run92_h100/ are those H100 runs; down leaves the inline path from 35 % active on that card,
# CARD_SETTINGS).  On the H200 of run 76 the one-token MLP launches read 1.47-1.54x of cuBLAS at 50 % (the acceptance
# asks 1.6x) and batch 4 at 50 % 0.80-0.92x (the H100: 0.99-1.29x).  Most rules since run 61
# were drawn on H100s; since the forty-fifth session the H200 takes the 4-warp batch tiles (sparse_linear.CARD_SETTINGS,
# drawn from runs 49, 50 and 76 across runs).  Every mode leaves one archive in $OUT.
#   h200:  timings and tests on this card (`rest` ran on an H100 in run 77).  (1) every_row against masked loads
#          below EVERY_ROW_MIN_UNION, and 4 warps against 8 (sweep_inline.py "dot77" at batch 4 and 50 %; the
#          60 % point was dropped in the forty-sixth session for (4)), then the acceptance rows at batch 4 and 50 %
#          as shipped (kernel_speed.py), then test_kernels.py's GPU tests of the batched launches that
#          CARD_SETTINGS changes here;
#          (3) one-token tiles and paths on gate/up and down at 50 and 70 % (benchmarks/ablations/one_token_configs.py;
#          3 items per multiprocessor added in the forty-sixth session: fewer partial sums to add at the end);
#          (4) one token at rho 0.8: z-item steps and rank blocks on gate/up and down at 50 and 70 % (the same script).
#   sweeps: (3) and (4) alone (added in the forty-seventh session: when a call for the H200 lands on an H100, the
#          one-token sweeps still run there; their rules then hold for H100s).
#   down:  (5) down-shaped launches without rank, one token: the inline path against the split-K launch with 8- and
#          16-row steps at 40, 50, 60 and 70 % (added in the forty-seventh session after run 78's `sweeps` on an H100:
#          at 50 % split-K with 16-row steps took 26.18 us against the inline path's 27.87).
#   tiles: (2) the batch tiles of run 76's plan ("dot76" at 50 %, "dot76er" at 0 %, batch 4).
#   rest:  the GPU tests run 76 did not reach: test_kernels.py's PDL chains and every other GPU test file, in four
#          shards in parallel.
#   suite: the whole GPU test suite in four shards in parallel.
#   h100:  (added in the forty-seventh session) the one-token rows of down at 50, 60 and 70 % through the module, as
#          shipped (kernel_speed.py): that the H100's CARD_SETTINGS entry takes effect on the card by its name.
#          Then (7) (added in the forty-eighth session), as at the end of `down`.
#   (7), at the end of `down` and `h100`: down fed F.silu(gate) * up as `sparsify` installs it (forward_silu_mul; the
#          inline launch forms the product as it loads, split-K needs a product launch first) at 50 and 60 %:
#          shipped (inline, the module's INLINE_MAX_ACTIVE) against split-K with 8- and 16-row steps.
# Rule (5), written in the forty-seventh session before the `down` run: on the card the run lands on, where
#   INLINE_MAX_ACTIVE now sends down at 40-50 % sparsity to the inline path, the split-K launch (the faster of 8 and
#   16 rows) takes over from the sparsities where it is at least 2 % below inline, provided it is not slower than
#   inline at any timed sparsity above those (INLINE_MAX_ACTIVE for that card then sits between the active fractions).
# Rule (6), written after the first `down` run (run 78d, H100: split-K 2.8-5.3 % below inline at 50 and 60 %, 0.3 %
#   above it at 70 %), whose rule (5) was ambiguous about 70 %: a second `down` run decides. On its card,
#   INLINE_MAX_ACTIVE becomes 0.35 (split-K from 35 % active up, inline below) if there the faster split-K setting is at
#   least 2 % below inline at both 50 and 60 %; 70 % (0.3 active) stays inline whatever it reads. 16-row steps take
#   over from 8 only if they are at least 2 % below 8 at both points too.
# Rule (7), written in the forty-eighth session before any run of it: on the card the run lands on, the SiLU-fed down
#   call (`choose_config(..., folds_product=True)`) takes the card's INLINE_MAX_ACTIVE like the plain call (on H100s:
#   split-K from 35 % active up) only if there the faster split-K setting, product launch included, is at least 2 %
#   below the shipped inline launch at both 50 and 60 %; otherwise it keeps the module's limit.
# Rules, written before run 77 and kept for runs 78 and 79 (each is for the card the run lands on; a rule drawn on an H200
# applies to H200s only unless an H100 run shows the same):
#   (1) every_row sets in at a lower union on this card if at every timed point at or above that union its four-case
#       sum is at least 1 % below the faster of the two plain sums, with gate/up alone below its faster plain timing.
#       4 warps against 8: the rule above VARIANTS_DOT77 in sweep_inline.py.
#   (2) run 76's rule, written above VARIANTS_DOT76 in sweep_inline.py.
#   (3) a one-token setting replaces the shipped choice on this card for a (case, sparsity) only if it is at least 2 %
#       below the shipped timing there, and not slower than shipped at the other sparsity of the same case.
#   (4) (added in the forty-sixth session, before the run) the same as (3) for the rho 0.8 settings: shipped is
#       128-rank blocks everywhere, z_steps 8 on gate/up at 50 % (WIDE_Z_STEPS: 40 % active) and 4 elsewhere.
#   The next call (kind nvidia-h200, which mostly lands on an H100; nothing waits to be timed on an H100, and the
#   whole GPU suite passed there on this kernel code in call 91, so there it only names the card):
#     if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
#       LIMIT=560 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; fi
#   (`acc`: the acceptance rows alone, the first step of `h200`, for a session with little device time left.)
#   then, on the same H200 while it is warm (kind nvidia-h200): `prewait` (rule (8) on that card: PREWAIT was chosen
#   on an H100), then `tiles`.
#   (The whole GPU suite ran on the forty-ninth session's code in run 86, H100: 194 passed, 5 skipped.)
#   prewait: (added in the forty-ninth session) sparse_linear.PREWAIT, what a one-token split-K weight item reads
#          before its PDL wait: its GPU tests (against the reference, and the PDL chain), then one token as shipped
#          against PREWAIT 1 (tau and the first step's c) and 2 (also the first step's rows, all of them) on gate/up,
#          down and q/k/v + o at 50 and 70 %, rho 1, and gate/up and down at 50 %, rho 0.8
#          (one_token_configs.py --switch-variant). The paths it touches: gate/up (split-K at 50 and 70 %), q/k/v + o,
#          down where it takes split-K (on H100s at 50 %; inline elsewhere, which PREWAIT leaves alone), every rank.
# Rule (8), written in the forty-ninth session before any run of it: PREWAIT becomes the value (1 or 2) whose sum over
#   the six rho 1 rows is lowest, if that sum is at least 1 % below shipped (0) and no row of it, rho 0.8 included, is
#   more than 1 % above shipped; the GPU tests must pass. It is a module default (the latency it hides, one memory
#   round trip at each launch's start, is the card's, not its bandwidth's), noted as untimed on a card it did not run on.
#   Since run 82 shipped is PREWAIT 1 and the mode times 0 and 2 against it; on another card the same rule, with
#   shipped in the place of 0, gives that card a CARD_SETTINGS entry if another value wins there.
#   (Rule (8) chose PREWAIT = 1 in kernel run 82, H100, results/run82_h100/.)
#   (Rule (9), written before kernel run 83 for LOWRANK_FIRST_ROWS_EARLY, one-token low-rank items loading their first
#   rows before their waits: six rho 0.8 rows summed 179.92 us against 179.32 shipped (H100, results/run83_h100/), so
#   the switch was removed; the `lr_early` mode that timed it went with it.)
#   decode_prewait: (added in the forty-ninth session, after run 83) PREWAIT in a whole compiled decode step
#          (Llama-3-8B shape, random bf16 weights, batch 1, prompt 128; fold_ab.py): dense, then at 0.5 and 0.7 shipped
#          (PREWAIT 1), "prewait 0", shipped again; then the GPU tests of the PREWAIT code paths.
# Rule (10), written in the forty-ninth session before any run of it: if at either target "prewait 0" is more than
#   1 % faster than both shipped readings, PREWAIT goes back to 0 until a second run decides; otherwise it stays.
#   (Rule (10) kept PREWAIT = 1: run 84, results/run84_h100/.)
#   (Rule (11), written before kernel run 87 for Z_PREWAIT, one-token z items reading their first step's c before the
#   PDL wait: six rho 0.8 rows summed 195.60 us against 178.28 shipped (H100, results/run87_h100/), so the switch
#   was removed with the `z_prewait` mode that timed it.)
#   (Rules (12) and (13), written before kernel run 88 for DOT_UNION_SCRATCH and DOT_WARPGROUP, the masked batch loop
#   with the tokens' union written to a byte per row first, and with the product transposed for Hopper's warp-group
#   MMAs: batch 4 at 50 %, four-case sums 304.46 and 271.97 us (both 299.31) against 207.02 shipped (H100,
#   results/run88_h100/); both switches were removed with the `batch` mode that timed them. Kernel run 89 timed z
#   items of every rank at once (512-rank blocks) under rule (4): 6-24 % slower in every row, results/run89_h100/.)
MODE=$1
case "$MODE" in h200|acc|h100|sweeps|down|tiles|rest|suite|prewait|decode_prewait) ;; *) echo "expected 'h200', 'acc', 'h100', 'sweeps', 'down', 'tiles', 'rest', 'suite', 'prewait' or 'decode_prewait', got '$MODE'"; exit 2 ;; esac
export PYTHONPATH=$PWD/src
O=/tmp/run79_$MODE; rm -rf $O; mkdir -p $O
END=$((SECONDS + ${LIMIT:-570} - 10))
step() {  # step SECONDS LOG COMMAND...: run with the smaller of SECONDS and what is left; log its exit status
  local t=$1 log=$2; shift 2; local left=$((END - SECONDS))
  if [ $left -lt 20 ]; then echo "skipped: $*" >> $O/steps.log; return; fi
  [ $t -gt $left ] && t=$left
  timeout $t "$@" > $O/$log 2>&1; echo "rc $? at $SECONDS s: $*" >> $O/steps.log
}
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
rest() {  # the GPU tests run 76 did not reach, in four shards in parallel, with what is left
  local left=$((END - SECONDS - 20))
  T=(tests/test_decode.py tests/test_decode_attention.py tests/test_eager_graphs.py tests/test_fuse.py
     tests/test_fuse_norm.py tests/test_fuse_silu.py tests/test_packed_kernels.py tests/test_sparsify.py
     "tests/test_kernels.py::test_gpu_pdl_chain_reads_each_launch_after_the_one_before")
  for i in 0 1 2 3; do timeout $left python -m pytest -q -rfEs -m gpu "${T[@]}" --shard $i/4 > $O/gpu_rest_g$i.log 2>&1 & done
  wait
  echo "rest at $SECONDS s" >> $O/steps.log
}
sweeps() {  # (3) one-token tiles and paths at 50 / 70 %, then (4) one token at rho 0.8
  S="path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1"
  step 140 one_token.log python benchmarks/ablations/one_token_configs.py --cases gate/up down --sparsities 0.5 0.7 \
    --config "splitk=$S" --config "splitk_6sm=${S/programs_per_sm=4/programs_per_sm=6}" \
    --config "splitk_3sm=${S/programs_per_sm=4/programs_per_sm=3}" \
    --config "splitk_16rows=${S/block_k=8/block_k=16}" \
    --config "compact_1024=path=compact,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,prefetch=1" \
    --config "inline=path=inline,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,prefetch=1" \
    --out $O/one_token
  R="path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1,block_kz=16"
  step 110 rho08.log python benchmarks/ablations/one_token_configs.py --cases gate/up down --sparsities 0.5 0.7 \
    --rho 0.8 --config "zs4=$R,block_r=128,z_steps=4" --config "zs8=$R,block_r=128,z_steps=8" \
    --config "zs4_r64=$R,block_r=64,z_steps=4" --config "zs8_r64=$R,block_r=64,z_steps=8" --out $O/rho08
}
down_sweep() {  # (5)/(6): down without rank, one token, inline against split-K at 40-70 %
  local S="path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1"
  step 120 down.log python benchmarks/ablations/one_token_configs.py --cases down --sparsities 0.4 0.5 0.6 0.7 \
    --config "splitk=$S" --config "splitk_16rows=${S/block_k=8/block_k=16}" --out $O/down
  down_silu
}
down_silu() {  # (7): down as sparsify installs it (the SiLU product folded into the inline launch), against split-K
  local S="path=splitk,block_k=8,block_m=1024,programs_per_sm=4,num_warps=4,num_stages=1"
  step 70 down_silu.log python benchmarks/ablations/one_token_configs.py --cases down --sparsities 0.5 0.6 --silu-fed \
    --config "splitk=$S" --config "splitk_16rows=${S/block_k=8/block_k=16}" --out $O/down_silu
}
acceptance_rows() {  # acceptance 2, 3 and 4 as shipped
  step 45 acc1.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" \
    --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 --out $O/acc1
  step 35 rho08_acc.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" \
    --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08_acc
  step 40 acc4.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" \
    --sparsities 0.5 --rhos 1 --factor-bits 16 --batches 4 --out $O/acc4
}
C=(--cases "gate/up 4096->14336" "down 14336->4096" "gate+up fused 4096->2x14336" "qkv fused + o")
if [ "$MODE" = h200 ]; then
  # Ordered by what a short call most needs (forty-eighth session): acceptance 2 and 3 read again as shipped (the last
  # H200 reading, run 76, had rho 0.8 at +15.4 / +15.2 % over rho 1 on gate/up / down, against a bound of 15 %),
  # acceptance 4 as shipped, the down launches (rules 5-7), 4 warps against 8, the tests of the launches
  # CARD_SETTINGS changes here, then the sweeps.
  acceptance_rows
  down_sweep
  for point in "dot77 4 0.5"; do
    set -- $point; d=$O/$1_b$2_s$3; mkdir -p $d
    step 75 $1_b$2_s$3.log python benchmarks/sweep_inline.py --variants $1 --batch $2 --sparsities $3 --reps 20 \
      "${C[@]}" --limit 70 --out $d
  done
  # The launches CARD_SETTINGS changes on this card (batches of 4 and more), against the reference.
  step 90 gpu_h200.log python -m pytest -q -rfEs -m gpu tests/test_kernels.py -k "batched_fused or every_row"
  sweeps
elif [ "$MODE" = acc ]; then  # (fiftieth session) acceptance 2, 3 and 4 as shipped, alone: for a short call
  acceptance_rows
elif [ "$MODE" = sweeps ]; then
  sweeps
elif [ "$MODE" = h100 ]; then
  step 100 down_h100.log python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases down --sparsities 0.5 0.6 0.7 \
    --rhos 1 --factor-bits 16 --batches 1 --out $O/down_h100
  down_silu
elif [ "$MODE" = down ]; then
  down_sweep
elif [ "$MODE" = tiles ]; then
  for point in "dot76 0.5" "dot76er 0"; do
    set -- $point; d=$O/$1; mkdir -p $d
    step 90 $1.log python benchmarks/sweep_inline.py --variants $1 --batch 4 --sparsities $2 --reps 20 "${C[@]}" \
      --limit 80 --out $d
  done
elif [ "$MODE" = rest ]; then
  rest
elif [ "$MODE" = decode_prewait ]; then
  step 330 decode_prewait.log python benchmarks/ablations/fold_ab.py --targets 0.5 0.7 \
    --variants shipped "prewait 0" shipped --out $O/decode_prewait.json
  step 150 gpu_prewait.log python -m pytest -q -rfEs -m gpu tests/test_kernels.py -k "before_the_wait or pdl_chain"
elif [ "$MODE" = prewait ]; then
  step 150 gpu_prewait.log python -m pytest -q -rfEs -m gpu tests/test_kernels.py -k "before_the_wait or pdl_chain"
  step 120 prewait.log python benchmarks/ablations/one_token_configs.py --cases gate/up down "qkv fused + o" \
    --sparsities 0.5 0.7 --switch-variant pw0=PREWAIT=0 --switch-variant pw2=PREWAIT=2 --out $O/prewait
  step 80 prewait_rho08.log python benchmarks/ablations/one_token_configs.py --cases gate/up down --sparsities 0.5 \
    --rho 0.8 --switch-variant pw0=PREWAIT=0 --switch-variant pw2=PREWAIT=2 --out $O/prewait_rho08
else
  left=$((END - SECONDS - 20))
  for i in 0 1 2 3; do timeout $left python -m pytest -q -rfEs -m gpu tests/ --shard $i/4 > $O/gpu_suite_g$i.log 2>&1 & done
  wait
  echo "suite at $SECONDS s" >> $O/steps.log
fi
tar czf $OUT/run79_$MODE.tgz -C /tmp run79_$MODE
cat $O/steps.log
