# Kernel run 69 (cli call, H100, 2026-12-06), run from the repository root at commit e513213 as
#     LIMIT=560 bash benchmarks/next_device_call.sh cli
# with the script as it ran in ../next_device_call_e513213.sh (benchmarks/next_device_call.sh at that commit).
