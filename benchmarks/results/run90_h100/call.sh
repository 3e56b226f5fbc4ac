# Device call 90 (fiftieth session, ~12:47 UTC), tree 6613965 (after the removal of DOT_UNION_SCRATCH and
# DOT_WARPGROUP), one call naming nvidia-h200; it landed on an H100 80GB HBM3, so it ran the else branch (167 s):
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=200 bash benchmarks/next_device_call.sh acc; else nvidia-smi -L; export PYTHONPATH=$PWD/src; timeout 170 python -m pytest -q -rfEs -m gpu tests/test_kernels.py -k "batched_fused or every_row or graph_capture or compile_fullgraph" > $OUT/gpu_k.log 2>&1; echo rc $?; tail -4 $OUT/gpu_k.log; fi
# -> 16 passed, 255 deselected in 142.84 s (the batched launches at 2, 3, 4 and 8 tokens, every_row in bf16 and fp16,
#    CUDA-graph capture and torch.compile(fullgraph=True) of an RSparseLinear: acceptance 5 on this code).
