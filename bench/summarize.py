#!/usr/bin/env python3
"""Summarize bench/run-matrix.sh output: median and best IOPS, median p50/p99 latency, the
ratio of Sluice's median IOPS to the probe's median depth-32 (or depth-1 for QD1) rate from
the same runs, CPU steal (median and max) over the runs of each point, the 1-minute load
average, and the share of the run's wall time the target's poll thread was on a CPU with
the number of times it was preempted (runs recorded before these fields existed show -)."""
import json
import statistics
import sys
from collections import defaultdict


def med_of(runs, key, fmt):
    vals = [r[key] for r in runs if key in r]
    return fmt.format(statistics.median(vals)) if vals else "-"


def main(path):
    points = defaultdict(list)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                points[(r["backend"], r["io_size"], r["workload"], r["qd"])].append(r)
    print("| backend | size | workload | QD | runs | median IOPS | best IOPS | p50 us | p99 us "
          "| probe rt/s | ratio | steal % (median/max) | load | poll on-CPU % | preempt/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(points):
        runs = points[key]
        b, o, w, q = key
        iops = [r["perf"]["total"]["iops"] for r in runs]
        p50 = statistics.median(r["perf"]["total"]["p50_us"] for r in runs)
        p99 = statistics.median(r["perf"]["total"]["p99_us"] for r in runs)
        depth = 1 if q == 1 else 32
        probe = statistics.median(
            p["per_sec"] for r in runs for p in r["probe"] if p["depth"] == depth)
        steal = [r["steal_pct"] for r in runs]
        med = statistics.median(iops)
        load = med_of(runs, "load1", "{:.1f}")
        oncpu = med_of(runs, "poll_cpu_pct", "{:.0f}")
        pre = [r["poll_preempt"] / max(r["perf"].get("seconds", 1.0), 1e-9)
               for r in runs if "poll_preempt" in r]
        pre_s = f"{statistics.median(pre):.0f}" if pre else "-"
        print(f"| {b} | {o // 1024} KiB | {w} | {q} | {len(runs)} | {med:,.0f} | {max(iops):,.0f} "
              f"| {p50:.1f} | {p99:.1f} | {probe:,.0f} (d{depth}) | {med / probe:.2f} "
              f"| {statistics.median(steal):.1f} / {max(steal):.1f} | {load} | {oncpu} | {pre_s} |")
    worst = max((r["steal_pct"] for rs in points.values() for r in rs), default=0)
    if worst > 5:
        print(f"\nWARNING: CPU steal reached {worst:.1f}% during these runs; "
              "compare ratios, not absolute figures.")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs.jsonl")
