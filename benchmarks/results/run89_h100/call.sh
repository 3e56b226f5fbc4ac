# Kernel run 89 (fiftieth session), tree 8f325cb, the same H100 kept warm after run 88, two calls naming nvidia-h100-x1:
nvidia-smi -L; LIMIT=200 bash benchmarks/next_device_call.sh zwide      # 39 s
export PYTHONPATH=$PWD/src; mkdir -p $OUT; timeout 230 python -m pytest -q -rfEs -m gpu tests/test_kernels.py \
  -k "warpgroup or union_scratch" > $OUT/gpu_wg.log 2>&1; echo rc $?; tail -5 $OUT/gpu_wg.log   # 133 s: 4 passed
