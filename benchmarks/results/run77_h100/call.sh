# Kernel run 77 (forty-sixth session, 2026-12-07), `run` with kind nvidia-h200, tree a876a01; it landed on an H100,
# so the else branch ran (tiles, then rest).  Wall 264 s.
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=585 bash benchmarks/next_device_call.sh h200; else LIMIT=230 bash benchmarks/next_device_call.sh tiles; LIMIT=340 bash benchmarks/next_device_call.sh rest; fi
