# Kernel run 69 (b4 call, H100, 2026-12-06), run from the repository root at commit e513213 as
#     LIMIT=140 bash benchmarks/next_device_call.sh b4
# with the script as it ran in ../next_device_call_e513213.sh (benchmarks/next_device_call.sh at that commit).
