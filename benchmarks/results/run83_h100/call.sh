# Kernel run 83 (forty-ninth session, 2026-12-07): one call, kind nvidia-h200, tree 18a37f9; the card was an
# H100 80GB HBM3 (1980 / 2619 MHz), so the `lr_early` mode ran (221 s).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=560 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; LIMIT=440 bash benchmarks/next_device_call.sh lr_early; fi; ls $OUT
