# Kernel run 70 (dot8 call, H100, 2026-12-06), run from the repository root at commit 8740d30 as
#     LIMIT=400 bash benchmarks/next_device_call.sh dot8
# Its GPU tests ran out of the step's 280 s at 82 % (58 passed, none failed); the same machine, still warm, then ran
#     export PYTHONPATH=$PWD/src; timeout 440 python -m pytest -v -rfEs -m gpu tests/test_kernels.py > $OUT/gpu_kernels_2.log 2>&1
# (gpu_kernels_2.log: 70 passed). The script as it ran: next_device_call_8740d30.sh (benchmarks/next_device_call.sh at that commit).
