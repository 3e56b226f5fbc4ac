# Kernel run 68, third call (H100, same warm machine, SINGLE_TALL_STEPS_MAX_ACTIVE = 0.45); from the repository root:
export PYTHONPATH=$PWD/src; O=/tmp/run68_tests; mkdir -p $O; timeout 275 python -m pytest -v -rfEs -m gpu tests/test_kernels.py > $O/gpu_kernels.log 2>&1; echo "rc $? $SECONDS" > $O/steps.log; tar czf $OUT/run68_tests.tgz -C /tmp run68_tests; tail -3 $O/gpu_kernels.log
