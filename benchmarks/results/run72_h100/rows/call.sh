# Kernel run 72 (H100, 2026-12-06), from the repository root at commit e959324, no kind named (an H100 came):
#     if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=540 bash benchmarks/next_device_call.sh accept; else LIMIT=540 bash benchmarks/next_device_call.sh rows; fi
# The script as it ran: ../next_device_call_e959324.sh.
