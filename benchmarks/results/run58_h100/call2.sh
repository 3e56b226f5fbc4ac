# Kernel run 58, second call: the same switch decisions (from the first call's files, if this machine ran it), the
# GPU test suite in four shards and the CLI check.
export PYTHONPATH=$PWD/src
python benchmarks/ablations/adopt_switches.py --long build/run58/a/long_input_z.jsonl build/run58/b/long_input_z.jsonl \
  --dot build/run58/c/dot_z_items.jsonl --apply src/rsparse/kernels/sparse_linear.py > $OUT/decisions.json 2>&1
cat $OUT/decisions.json
for i in 0 1 2 3; do timeout 420 python -m pytest -q -m gpu tests/ --shard $i/4 > $OUT/g$i.log 2>&1 & done; wait
tail -2 $OUT/g*.log
timeout 150 bash benchmarks/cli_gpu_check.sh > $OUT/cli.log 2>&1; echo "cli rc $?"; tail -5 $OUT/cli.log
