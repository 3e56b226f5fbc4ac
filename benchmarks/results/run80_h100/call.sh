# Kernel run 80 (forty-eighth session, 2026-12-07): a call for nvidia-h200 (tree 001fc41, the run-79 plan's
# header call) landed on an H100 80GB HBM3 and only named the card; this follow-up call on the same warm machine
# (kind nvidia-h100-x1) read the acceptance rows as shipped. 71 s.
export PYTHONPATH=$PWD/src; O=/tmp/run80_h100; mkdir -p $O; nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt
timeout 60 python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" --sparsities 0 0.5 0.7 --rhos 1 --factor-bits 16 --batches 1 --out $O/acc1 > $O/acc1.log 2>&1; echo "acc1 rc $? at $SECONDS" >> $O/steps.log
timeout 45 python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 --batches 1 --out $O/rho08_acc > $O/rho08_acc.log 2>&1; echo "rho08 rc $? at $SECONDS" >> $O/steps.log
timeout 50 python benchmarks/kernel_speed.py --reps 20 --rounds 3 --cases gate/up down gate+up "qkv fused + o" --sparsities 0.5 --rhos 1 --factor-bits 16 --batches 4 --out $O/acc4 > $O/acc4.log 2>&1; echo "acc4 rc $? at $SECONDS" >> $O/steps.log
tar czf $OUT/run80_h100.tgz -C /tmp run80_h100; cat $O/steps.log
