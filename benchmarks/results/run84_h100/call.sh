# Kernel runs 84-86 (forty-ninth session, 2026-12-07), tree 5138f0f, one H100 80GB HBM3 (1980 / 2619 MHz) held
# across the calls.
# Run 84: one call, kind nvidia-h200; the card was an H100, so `decode_prewait` ran (341 s; its GPU-test step was cut
# at 150 s after 7 passes, none failed).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then LIMIT=560 bash benchmarks/next_device_call.sh h200; else nvidia-smi -L; LIMIT=540 bash benchmarks/next_device_call.sh decode_prewait; fi; ls $OUT
# Run 85 (kind nvidia-h100-x1, the same machine; a first try without PYTHONPATH failed to import rsparse): the GPU tests
# of the PREWAIT paths in four shards -> gpu_tests/
export PYTHONPATH=$PWD/src; mkdir -p $OUT/t; for i in 0 1 2 3; do timeout 300 python -m pytest -q -rfEs -m gpu tests/test_kernels.py -k "pdl_chain or compact_path or before_the_wait or cuda_graph or fullgraph" --shard $i/4 > $OUT/t/g$i.log 2>&1 & done; wait; tail -n 3 $OUT/t/g*.log
# Run 86 (same machine): the whole GPU suite in four shards -> suite/
LIMIT=470 bash benchmarks/next_device_call.sh suite > /dev/null 2>&1; tar xzf $OUT/run79_suite.tgz -C /tmp; for f in /tmp/run79_suite/gpu_suite_g*.log; do tail -n 4 $f; done; cat /tmp/run79_suite/steps.log
