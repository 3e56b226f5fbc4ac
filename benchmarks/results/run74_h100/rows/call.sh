# Kernel run 74: one call naming nvidia-h200 (an H100 came), 2026-12-06, commit d703b85
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=570 bash benchmarks/next_device_call.sh accept; else LIMIT=400 bash benchmarks/next_device_call.sh rows; fi
