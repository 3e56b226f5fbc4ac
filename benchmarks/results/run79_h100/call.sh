# Kernel run 79 (forty-eighth session, 2026-12-07): one call, kind nvidia-h200, tree 8a90589; the card was an
# H100 80GB HBM3 (1980 / 2619 MHz), so the `h100` mode ran (38 s).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=520 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; LIMIT=170 bash benchmarks/next_device_call.sh h100; fi; ls $OUT
