# Kernel run 88 (fiftieth session, 2026-12-07 ~12:19 UTC), tree 2de4c9a, one call naming nvidia-h100-x1 (287 s command):
nvidia-smi -L; LIMIT=420 bash benchmarks/next_device_call.sh batch
