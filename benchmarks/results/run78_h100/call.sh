# Kernel run 78 (forty-seventh session, 2026-12-07): three calls, all on one H100 80GB HBM3 (1980 / 2619 MHz).
# 1. kind nvidia-h200, tree 4df7099 (the card was an H100, so `sweeps` ran; 45 s) -> sweeps/
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=520 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; LIMIT=260 bash benchmarks/next_device_call.sh sweeps; fi
# 2. kind nvidia-h100-x1 (the same warm machine), tree 57ea761 (= 7a50407 less rule (6)), after rule (5) was written -> down_first/
nvidia-smi -L; LIMIT=150 bash benchmarks/next_device_call.sh down
# 3. the same machine, tree 7a50407, after rule (6) was written -> down_second/
nvidia-smi -L; mv /tmp/run78_down /tmp/run78_down_first 2>/dev/null; LIMIT=150 bash benchmarks/next_device_call.sh down
