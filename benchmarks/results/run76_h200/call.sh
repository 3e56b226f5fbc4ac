# kind nvidia-h200 (an H200 came), 493 s
nvidia-smi --query-gpu=name --format=csv,noheader; if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=570 bash benchmarks/next_device_call.sh accept; else LIMIT=300 bash benchmarks/next_device_call.sh tiles; fi
