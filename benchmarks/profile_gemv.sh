# The device call of benchmarks/profile_gemv.py (from the repository root; OUT set by the tool).
export PYTHONPATH=$PWD/src
P="python3 ${P:-benchmarks/profile_gemv.py}"
exec >$OUT/log.txt 2>&1
nvidia-smi; ncu --version
timeout 150 $P t; echo t $? $SECONDS
B="ncu --clock-control none --profile-from-start off --nvtx -f"
S=
for s in SpeedOfLight MemoryWorkloadAnalysis WarpStateStats Occupancy LaunchStats SchedulerStats; do S="$S --section $s"; done
# pass a: core sections, 3 calls of each variant
timeout 130 $B $S -o $OUT/a $P n 3; echo a $? $SECONDS
# pass b: the full set (pc sampling, source counters), 1 call of each variant, until 440 s
timeout $((440-SECONDS)) $B --set full --import-source no -o $OUT/b $P n 1; echo b $? $SECONDS
cd $OUT
ncu -i a.ncu-rep --page details >a_details.txt
for t in a b; do ncu -i $t.ncu-rep --page raw --csv --print-units base >${t}_raw.csv; done
ncu -i b.ncu-rep --page source --csv --print-source sass -k regex:'gather|splitk' >b_source.csv
tar czf reports.tar.gz *.ncu-rep && rm *.ncu-rep
echo done $SECONDS
