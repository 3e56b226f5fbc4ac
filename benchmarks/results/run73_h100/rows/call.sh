# Kernel run 73 (H100, 2026-12-06), from the repository root at commit 652835a, kind nvidia-h100-x1, the last 293 s:
export PYTHONPATH=$PWD/src; mkdir -p $OUT/t; timeout 80 python -m pytest -v -rfEs -m gpu tests/test_kernels.py -k "every_row" > $OUT/t/gpu_every_row.log 2>&1; echo "rc $?" >> $OUT/t/gpu_every_row.log; tail -3 $OUT/t/gpu_every_row.log; LIMIT=120 bash benchmarks/next_device_call.sh rows; cp /tmp/run73_rows.tgz $OUT/ 2>/dev/null; ls $OUT
# gpu_every_row.log came back beside the archive and is copied in here. The script as it ran: ../next_device_call_652835a.sh.
