# Second device call (benchmarks/profile_gemv_pm.py), from the repository root; OUT set by the tool.
export PYTHONPATH=$PWD/src
P="python3 ${P:-benchmarks/profile_gemv_pm.py}"
exec >$OUT/log2.txt 2>&1
timeout 100 $P t; echo t $? $SECONDS
B="ncu --clock-control none --profile-from-start off --section PmSampling -f -o $OUT/c"
timeout 90 $B --pm-sampling-interval 250 $P n; echo c $? $SECONDS
[ -f $OUT/c.ncu-rep ] || { timeout 90 $B $P n; echo c2 $? $SECONDS; }
timeout 60 $P dump $OUT/c.ncu-rep >$OUT/pm.csv; echo d $? $SECONDS
ncu -i $OUT/c.ncu-rep --page raw --csv --print-units base >$OUT/c_raw.csv
gzip $OUT/c.ncu-rep
