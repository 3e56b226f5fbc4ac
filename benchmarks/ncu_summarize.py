"""Summaries of the ncu profile of 2026-11-30 (benchmarks/profile_gemv.py, profile_gemv_pm.py); runs
on the CPU, no ncu needed.

    python benchmarks/ncu_summarize.py table A_RAW.csv B_RAW.csv     # per-kernel table (markdown)
    python benchmarks/ncu_summarize.py metrics A_RAW.csv [...]       # selected metrics, CSV
    python benchmarks/ncu_summarize.py phases B_SOURCE.csv           # pc samples before/in/after the loop
    python benchmarks/ncu_summarize.py stalls B_SOURCE.csv K [TOP]   # top stalled SASS of section K
    python benchmarks/ncu_summarize.py timeline REPORT.ncu-rep [...] # PM-sampling DRAM read % per bin

`timeline` reads the PM-sampling series straight from the .ncu-rep file (length-prefixed protobuf
blocks, decoded without a schema: metric entries are field 13 of a result, name index field 1 into
the string list in the block header's field 4, instances field 3 = (timestamp ns, double)).  The
layout was worked out from Nsight Compute 2025.3.1 reports only; the ncu_report module of
that version listed none of these `TriageCompute` series under `pmsampling:` names.
"""

import csv
import re
import statistics
import struct
import sys

STALLS = ["long_scoreboard", "wait", "selected", "not_selected", "barrier", "membar", "no_instruction",
          "short_scoreboard", "branch_resolving", "math_pipe_throttle", "lg_throttle", "mio_throttle", "imc_miss",
          "sleeping", "dispatch_stall", "drain", "tex_throttle", "misc", "gmma"]


def num(s):
    try:
        return float(str(s).replace(",", ""))
    except ValueError:
        return float("nan")


def load_raw(path):
    rows = list(csv.reader(open(path)))
    h = rows[0]
    out = []
    for r in rows[2:]:  # row 1 holds the units
        d = dict(zip(h, r))
        nv = re.search(r":([a-z0-9_]+\|[0-9x]+\|\d)", r[4]) if "Push/Pop" in h[4] else None
        d["_tag"] = nv.group(1) if nv else "?"
        out.append(d)
    return out


def short(name):
    for k, v in (("gather", "gather"), ("_compact", "compaction"), ("splitk", "splitk"), ("elementwise", "memset"),
                 ("splitKreduce", "splitKreduce"), ("nvjet", "cuBLAS nvjet")):
        if k in name:
            return v
    return name[:20]


def table(a_path, b_path):
    groups = {}
    for d in load_raw(a_path):
        v, s, _ = d["_tag"].split("|")
        groups.setdefault((s, v, short(d["Kernel Name"])), []).append(d)
    bmap = {}
    for d in load_raw(b_path):
        v, s, _ = d["_tag"].split("|")
        bmap[(s, v, short(d["Kernel Name"]))] = d
    print("| shape | variant | kernel | grid × block | regs | µs (pass a, median of 3) | µs (pass b) | DRAM read MB | "
          "DRAM % of peak | L2 hit % | occupancy theor./achieved % | issue active % | eligible warps/sched. | "
          "stall cycles/issue: top 3 (share) | pc samples long_sb |")
    print("|" + "---|" * 15)
    for k, ds in groups.items():
        b = bmap.get(k, {})
        dur = [num(d["gpu__time_duration.sum"]) / 1e3 for d in ds]
        g = lambda m: statistics.median(num(d.get(m, "nan")) for d in ds)  # noqa: E731
        st = [(g(f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio"), s) for s in STALLS]
        tot = sum(v for v, _ in st if v == v)
        top = ", ".join(f"{s} {v:.1f} ({v / tot * 100:.0f} %)" for v, s in sorted(st, reverse=True)[:3])
        pc = num(b.get("smsp__pcsamp_warps_issue_stalled_long_scoreboard", "nan")) / num(b.get("smsp__pcsamp_sample_count", "nan"))
        print(f"| {k[0]} | {k[1]} | {k[2]} | {ds[0]['Grid Size']}×{ds[0]['Block Size']} | {ds[0]['launch__registers_per_thread']} | "
              f"{statistics.median(dur):.2f} ({min(dur):.2f}–{max(dur):.2f}) | {num(b.get('gpu__time_duration.sum', 'nan')) / 1e3:.2f} | "
              f"{num(b.get('dram__bytes_read.sum', 'nan')) / 1e6:.2f} | {g('gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed'):.1f} | "
              f"{g('lts__t_sector_hit_rate.pct'):.1f} | {g('sm__maximum_warps_per_active_cycle_pct'):.1f} / "
              f"{g('sm__warps_active.avg.pct_of_peak_sustained_active'):.1f} | {g('smsp__issue_active.avg.pct_of_peak_sustained_active'):.1f} | "
              f"{g('smsp__warps_eligible.avg.per_cycle_active'):.2f} | {top} | {pc * 100:.0f} % |")


METRICS = ["gpu__time_duration.sum", "launch__grid_size", "launch__block_size", "launch__registers_per_thread",
           "launch__waves_per_multiprocessor", "launch__occupancy_limit_registers", "dram__bytes_read.sum",
           "dram__bytes_write.sum", "dram__cycles_active.avg", "dram__cycles_elapsed.avg",
           "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "lts__t_sector_hit_rate.pct",
           "lts__t_sectors_srcunit_tex_op_red.sum", "sm__maximum_warps_per_active_cycle_pct",
           "sm__warps_active.avg.pct_of_peak_sustained_active", "smsp__issue_active.avg.pct_of_peak_sustained_active",
           "smsp__warps_eligible.avg.per_cycle_active", "gpc__cycles_elapsed.avg.per_second",
           "smsp__pcsamp_sample_count", "smsp__pcsamp_warps_issue_stalled_long_scoreboard"] + [
           f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio" for s in STALLS]


def metrics(paths):
    w = csv.writer(sys.stdout)
    w.writerow(["file", "id", "nvtx", "kernel"] + METRICS)
    for p in paths:
        for i, d in enumerate(load_raw(p)):
            w.writerow([p.split("/")[-1], i, d["_tag"], d["Kernel Name"][:60]] + [d.get(m, "") for m in METRICS])


def _source_sections(path):
    lines = open(path).read().split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.startswith('"Kernel Name"')]
    for w, s in enumerate(starts):
        e = starts[w + 1] if w + 1 < len(starts) else len(lines)
        rows = list(csv.reader(lines[s + 1:e]))
        yield lines[s], [dict(zip(rows[0], r)) for r in rows[1:] if len(r) > 5]


def phases(path):
    for title, R in _source_sections(path):
        ex = [num(r["Instructions Executed"]) for r in R]
        warps = ex[0]
        loop = [i for i, x in enumerate(ex) if x > 1.5 * warps]
        a, b = loop[0], loop[-1]
        samp = [num(r["Warp Stall Sampling (All Samples)"]) for r in R]
        lsb = [num(r["stall_long_sb"]) for r in R]
        tot = sum(samp)
        parts = [("before loop", slice(0, a)), ("loop", slice(a, b + 1)), ("after loop", slice(b + 1, None))]
        print(f"{title}: {warps:.0f} warps, {max(ex) / warps:.1f} loop passes per warp, {tot:.0f} samples; " + "; ".join(
            f"{n} {sum(samp[sl]) / tot * 100:.0f} % (long_sb {sum(lsb[sl]) / tot * 100:.0f} %)" for n, sl in parts))


def stalls(path, which, top):
    title, R = list(_source_sections(path))[which]
    tot = sum(num(r["Warp Stall Sampling (All Samples)"]) for r in R)
    cols = [c for c in R[0] if c.startswith("stall_") and "Not Issued" not in c]
    print(title, f"{len(R)} SASS instructions, {tot:.0f} samples")
    print("shares: " + ", ".join(f"{c[6:]} {v / tot * 100:.1f} %" for c, v in sorted(
        ((c, sum(num(r[c]) for r in R)) for c in cols), key=lambda t: -t[1]) if v))
    idx = sorted(range(len(R)), key=lambda i: -num(R[i]["Warp Stall Sampling (All Samples)"]))[:top]
    for i in sorted(idx):
        r = R[i]
        s = num(r["Warp Stall Sampling (All Samples)"])
        why = sorted(((num(r[c]), c[6:]) for c in cols), reverse=True)[0]
        print(f"{i:5d}  {r['Source'].strip()[:58]:58s} samples {s:5.0f} ({s / tot * 100:4.1f} %)  "
              f"executed {r['Instructions Executed']:>7s}  mostly {why[1]}")


def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _pb(b):
    out, i = [], 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(wt)
        out.append((f, wt, v))
    return out


def report_results(path):
    """Per profiled kernel: {metric name: (value or None, [(timestamp, value), ...])}."""
    d = open(path, "rb").read()
    p = 4
    p += 4 + struct.unpack("<I", d[p:p + 4])[0]
    names, results = [], []
    while p < len(d):
        n = struct.unpack("<I", d[p:p + 4])[0]
        hdr = _pb(d[p + 4:p + 4 + n])
        p += 4 + n
        size = next((v for f, wt, v in hdr if f == 5 and wt == 0), 0)
        for f, wt, v in hdr:
            if f == 4 and wt == 2 and len(v) > 100:
                names = [c.decode() for _, _, c in _pb(v)]
        payload, p = d[p:p + size], p + size
        if not payload:
            continue
        entries = [v for f, wt, v in _pb(payload[4:]) if f == 13]
        if len(entries) < 50:
            continue
        res = {}
        for e in entries:
            agg, inst, idx = None, [], None
            for f, wt, v in _pb(e):
                if f == 1 and wt == 0:
                    idx = v
                elif f == 2 and wt == 2:
                    for g, w2, x in _pb(v):
                        agg = struct.unpack("<d", x)[0] if w2 == 1 else x
                elif f == 3 and wt == 2:
                    t = val = None
                    for g, w2, x in _pb(v):
                        for gg, ww, xx in _pb(x) if w2 == 2 else []:
                            if g == 1 and ww == 0:
                                t = xx
                            if g == 2:
                                val = struct.unpack("<d", xx)[0] if ww == 1 else xx
                    inst.append((t, val))
            res[names[idx] if idx is not None and idx < len(names) else f"#{idx}"] = (agg, inst)
        results.append(res)
    return results


def timeline(paths):
    key = "FBSP.TriageCompute.dramc__read_throughput.avg.pct_of_peak_sustained_elapsed"
    print("report,kernel_index,grid,duration_us,bin_ns,dram_read_pct_per_bin (first bin before the first > 1 % one)")
    for path in paths:
        for i, r in enumerate(report_results(path)):
            if key not in r:
                continue
            ts = [t for t, _ in r[key][1]]
            v = [x or 0.0 for _, x in r[key][1]]
            on = [j for j, x in enumerate(v) if x > 1.0]
            a, b = (on[0], on[-1]) if on else (0, -1)
            dt = ts[a + 1] - ts[a] if on else 0
            print(f"{path.split('/')[-1]},{i},{r.get('launch__grid_size', (0,))[0]:.0f},"
                  f"{r['gpu__time_duration.sum'][0] / 1e3:.2f},{dt}," + " ".join(f"{x:.0f}" for x in v[max(0, a - 1):b + 2]))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "table":
        table(*args)
    elif cmd == "metrics":
        metrics(args)
    elif cmd == "phases":
        phases(args[0])
    elif cmd == "stalls":
        stalls(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 15)
    elif cmd == "timeline":
        timeline(args)
