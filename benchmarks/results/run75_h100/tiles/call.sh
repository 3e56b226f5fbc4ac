# Kernel run 75: one call naming nvidia-h200 (an H100 came), 2026-12-06, commit 8d1a49d (NOTES-only commit after it)
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=570 bash benchmarks/next_device_call.sh accept; else LIMIT=300 bash benchmarks/next_device_call.sh tiles; fi
