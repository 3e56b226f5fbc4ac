# Kernel run 58 (thirty-sixth session): time the switches, adopt the winners by adopt_switches.py's rules, then the
# acceptance rows with them. One device call, 590 s.
export PYTHONPATH=$PWD/src
END=$((SECONDS + 585))
left() { echo $((END - SECONDS)); }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
mkdir -p $OUT/a $OUT/b $OUT/c $OUT/k1 $OUT/k8 build
timeout 150 python benchmarks/ablations/long_input_z.py --out $OUT/a > $OUT/a.log 2>&1; echo "a rc $? at $SECONDS s" >> $OUT/steps.log
timeout 100 python benchmarks/ablations/long_input_z.py --sparsities 0.5 --cases "gate/up 4096->14336" \
  "gate+up fused 4096->2x14336" "qkv fused + o" --variants rho1 bf16 bf16_z_late 4bit 4bit_z_late --out $OUT/b \
  > $OUT/b.log 2>&1; echo "b rc $? at $SECONDS s" >> $OUT/steps.log
timeout 90 python benchmarks/ablations/dot_z_items.py --factor-bits 4 --out $OUT/c > $OUT/c.log 2>&1; echo "c rc $? at $SECONDS s" >> $OUT/steps.log
rm -rf build/run58 && mkdir -p build/run58 && cp -r $OUT/a $OUT/b $OUT/c build/run58/
python benchmarks/ablations/adopt_switches.py --long $OUT/a/long_input_z.jsonl $OUT/b/long_input_z.jsonl \
  --dot $OUT/c/dot_z_items.jsonl --apply src/rsparse/kernels/sparse_linear.py > $OUT/decisions.json 2>&1
cat $OUT/decisions.json; cat $OUT/steps.log
timeout $(( $(left) - 5 > 10 ? $(left) - 5 : 10 )) python benchmarks/kernel_speed.py --reps 20 --rounds 3 --same-bytes \
  --cases gate/up down "gate+up" "qkv fused + o" --sparsities 0.5 0.7 --rhos 1 --batches 1 4 --out $OUT/k1 \
  > $OUT/k1.log 2>&1; echo "k1 rc $? at $SECONDS s" >> $OUT/steps.log
timeout $(( $(left) > 10 ? $(left) : 10 )) python benchmarks/kernel_speed.py --reps 20 --rounds 3 \
  --cases gate/up down "gate+up" "qkv fused + o" --sparsities 0.5 --rhos 0.8 --factor-bits 16 4 --batches 1 \
  --out $OUT/k8 > $OUT/k8.log 2>&1; echo "k8 rc $? at $SECONDS s" >> $OUT/steps.log
cat $OUT/steps.log; tail -3 $OUT/*.log
