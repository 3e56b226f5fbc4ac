# Kernel run 81 (forty-eighth session, 2026-12-07): GPU tests at tree 9a337fe plus NOTES (kernels and tests as at
# 8a90589's CI), two calls on one H100 80GB HBM3.
# 1. kind nvidia-h200 (landed on an H100, so the else branch ran; wall 163 s) -> kernels/
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=400 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; export PYTHONPATH=$PWD/src; O=/tmp/run81_h100; mkdir -p $O; nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $O/gpu.txt; for i in 0 1 2 3; do timeout 370 python -m pytest -q -rfEs -m gpu tests/test_kernels.py --shard $i/4 > $O/gpu_kernels_g$i.log 2>&1 & done; wait; echo "done at $SECONDS s" >> $O/steps.log; tar czf $OUT/run81_h100.tgz -C /tmp run81_h100; tail -n 2 $O/gpu_kernels_g*.log; fi; ls $OUT
# 2. kind nvidia-h100-x1, the same warm machine (wall 206 s; the shards' time limit ended them) -> rest/
LIMIT=235 bash benchmarks/next_device_call.sh rest; tail -n 1 /tmp/run79_rest/gpu_rest_g*.log
