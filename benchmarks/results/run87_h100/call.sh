# Kernel run 87 (forty-ninth session, 2026-12-07): one call, kind nvidia-h200, tree 155a6cd; the card was an
# H100 80GB HBM3 (1980 / 2619 MHz); 144 s.
nvidia-smi -L; LIMIT=330 bash benchmarks/next_device_call.sh z_prewait; ls $OUT
