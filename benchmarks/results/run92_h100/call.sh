# Call 92 (fifty-first session, 2026-12-07 15:03 UTC), kind nvidia-h200. The call before it (the header call, `acc`
# branch for an H200) landed on this H100 and only named the card; on the warm machine:
nvidia-smi -L; export PYTHONPATH=$PWD/src; LIMIT=200 bash benchmarks/next_device_call.sh acc
# Tree: the kernel code of 6613965 (the session's commits touch NOTES, results and the script's header comments).
# 115 s of command; GPU 0: NVIDIA H100 80GB HBM3 (1980 / 2619 MHz).
