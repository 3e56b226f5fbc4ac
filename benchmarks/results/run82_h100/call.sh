# Kernel run 82 (forty-ninth session, 2026-12-07): one call, kind nvidia-h200, tree fae9af8; the card was an
# H100 80GB HBM3 (1980 / 2619 MHz), so the `prewait` mode ran (182 s).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=560 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; LIMIT=420 bash benchmarks/next_device_call.sh prewait; fi; ls $OUT
