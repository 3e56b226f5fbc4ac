# Kernel run 71, first call (H100, 2026-12-06), from the repository root at commit bace35b, the machine asked for as
# nvidia-h200:
#     if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=570 bash benchmarks/next_device_call.sh accept; else LIMIT=300 bash benchmarks/next_device_call.sh few; fi
# An H100 came, so `few` ran. The script as it ran: ../next_device_call_bace35b.sh.
