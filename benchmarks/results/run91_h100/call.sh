# Call 91 (fifty-first session, 2026-12-07 ~13:40 UTC), kind nvidia-h200; an H100 came, so the else branch ran.
# Tree 51e23f6 (the same kernel code as 6613965, after DOT_WARPGROUP and DOT_UNION_SCRATCH were removed).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then export PYTHONPATH=$PWD/src; LIMIT=560 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; export PYTHONPATH=$PWD/src; LIMIT=420 bash benchmarks/next_device_call.sh suite; fi
# Output: GPU 0: NVIDIA H100 80GB HBM3; "suite at 294 s"; 194 passed, 5 skipped (four shards: 51+1, 47+2, 49+1, 47+1).
