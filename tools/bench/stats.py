#!/usr/bin/env python3
"""tools/bench/stats.py - the arithmetic of tools/bench/bench (standard library only).

Subcommands:
  frame IN OUT          wrap the protobuf message in file IN (may be empty) in a gRPC frame
                        (flag 0, 4-byte big-endian length) and write it to OUT
  metrics FILE METHOD   from a Prometheus scrape of a daemon, print "OK CANCELLED OTHER": the
                        hm_grpc_requests_total count of METHOD with code OK, with CANCELLED, and
                        the sum of its other codes plus every code of the "unknown" method row
  run ...               parse one h2load run (its stdout and --log-file), compare it with the
                        server's own counters, print one JSON line; exit 1 if not verified
  summary [--discarded FILE] RUNS META OUT
                        print the table for the JSON lines in RUNS and write the summary
                        (META merged in) to OUT; exit 1 if any run failed verification
"""
import argparse
import json
import math
import re
import statistics
import struct
import sys

UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def cmd_frame(args):
    with open(args.input, "rb") as f:
        msg = f.read()
    with open(args.output, "wb") as f:
        f.write(struct.pack(">BI", 0, len(msg)) + msg)


def cmd_metrics(args):
    ok = cancelled = other = 0
    pat = re.compile(r'^hm_grpc_requests_total\{method="([^"]*)",code="([^"]*)"\}\s+(\d+)')
    with open(args.file) as f:
        for line in f:
            m = pat.match(line)
            if not m:
                continue
            method, code, n = m.group(1), m.group(2), int(m.group(3))
            if method == args.method:
                if code == "OK":
                    ok += n
                elif code == "CANCELLED":
                    cancelled += n
                else:
                    other += n
            elif method == "unknown":
                other += n
    print(ok, cancelled, other)


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not m:
        raise ValueError("unexpected h2load time: " + text)
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_h2load(path):
    """The figures h2load prints: req/s, elapsed, request counts, request time stats."""
    out = {}
    with open(path) as f:
        text = f.read()
    m = re.search(r"finished in ([0-9.]+)(us|ms|s), ([0-9.]+) req/s", text)
    if not m:
        raise ValueError("no 'finished in' line in h2load output " + path)
    out["elapsed_s"] = float(m.group(1)) * UNIT_US[m.group(2)] / 1e6
    out["req_per_s"] = float(m.group(3))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    if not m:
        raise ValueError("no 'requests:' line in h2load output " + path)
    for i, k in enumerate(["total", "started", "done", "succeeded", "failed", "errored", "timeout"]):
        out[k] = int(m.group(i + 1))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        out["min_us"], out["max_us"], out["mean_us"], out["sd_us"] = (
            to_us(m.group(i)) for i in range(1, 5)
        )
    return out


def percentile(sorted_vals, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def parse_log(path):
    """p50/p90/p99/p99.9 (us) of h2load's --log-file: start time, HTTP status, duration (us)."""
    vals = []
    with open(path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                vals.append(int(parts[2]))
    vals.sort()
    return {
        "logged": len(vals),
        "p50_us": percentile(vals, 50),
        "p90_us": percentile(vals, 90),
        "p99_us": percentile(vals, 99),
        "p999_us": percentile(vals, 99.9),
    }


def cmd_run(args):
    r = {"bench": args.bench, "side": args.side, "run": args.run, "mode": args.mode}
    r.update(parse_h2load(args.h2load))
    if args.log:
        r.update(parse_log(args.log))
    r["server_ok"] = args.server_ok
    r["server_other"] = args.server_other
    r["server_cancelled"] = args.server_cancelled
    problems = []
    if r["failed"] or r["errored"] or r["timeout"]:
        problems.append(
            "h2load: %d failed, %d errored, %d timeout" % (r["failed"], r["errored"], r["timeout"])
        )
    if args.server_other:
        problems.append("server answered %d calls with a non-OK status" % args.server_other)
    if args.mode == "requests" and args.server_cancelled:
        problems.append("server saw %d calls cancelled" % args.server_cancelled)
    if args.mode == "requests":
        # Every request h2load counted as succeeded must be an OK call at the server, and no more.
        if args.server_ok != r["succeeded"]:
            problems.append(
                "server counted %d OK calls, h2load %d succeeded" % (args.server_ok, r["succeeded"])
            )
    else:
        # A timed run stops with calls in flight: the server may finish some h2load no longer
        # counts, and sees the others cancelled; no more than were in flight.
        if args.server_cancelled > args.in_flight:
            problems.append("server saw %d calls cancelled, more than the %d in flight"
                            % (args.server_cancelled, args.in_flight))
        if not (r["succeeded"] <= args.server_ok <= r["succeeded"] + args.in_flight):
            problems.append(
                "server counted %d OK calls, outside h2load's %d succeeded + %d in flight"
                % (args.server_ok, r["succeeded"], args.in_flight)
            )
    if args.clk_tck:
        calls = max(1, args.server_ok + args.server_other + args.server_cancelled)
        tick_us = 1e6 / args.clk_tck
        r["server_cpu_s"] = args.server_ticks * tick_us / 1e6
        r["server_cpu_us_per_req"] = args.server_ticks * tick_us / calls
        r["postgres_cpu_us_per_req"] = args.pg_ticks * tick_us / calls
        r["h2load_cpu_us_per_req"] = args.h2load_ms * 1000.0 / calls
        if args.total_ticks > 0:
            ours = args.server_ticks + args.pg_ticks + args.h2load_ms * args.clk_tck / 1000.0
            r["machine_busy_pct"] = 100.0 * args.busy_ticks / args.total_ticks
            r["other_load_pct"] = max(0.0, 100.0 * (args.busy_ticks - ours) / args.total_ticks)
    r["verified"] = not problems
    r["problems"] = problems
    print(json.dumps(r, sort_keys=True))
    return 0 if r["verified"] else 1


def summarize(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def side_summary(runs):
    s = {"runs": len(runs), "verified_runs": sum(1 for r in runs if r["verified"])}
    for key in ["req_per_s", "mean_us", "sd_us", "max_us", "p50_us", "p90_us", "p99_us", "p999_us",
                "server_cpu_us_per_req", "postgres_cpu_us_per_req", "h2load_cpu_us_per_req",
                "machine_busy_pct", "other_load_pct"]:
        s[key] = summarize(runs, key)
    s["succeeded_total"] = sum(r["succeeded"] for r in runs)
    return s


def fmt_us(v):
    if v is None:
        return "-"
    if v >= 10000:
        return "%.1fms" % (v / 1000)
    if v >= 1000:
        return "%.2fms" % (v / 1000)
    return "%dus" % round(v)


def med(s, key):
    return s[key]["median"] if s.get(key) else None


def cmd_summary(args):
    with open(args.meta) as f:
        meta = json.load(f)
    runs = []
    with open(args.runs) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    discarded = []
    if args.discarded:
        with open(args.discarded) as f:
            discarded = [json.loads(l) for l in f if l.strip()]
    benches = {}
    for r in runs:
        benches.setdefault(r["bench"], {}).setdefault(r["side"], []).append(r)

    out = dict(meta)
    out["runs"] = runs
    out["discarded_runs"] = discarded
    out["results"] = {}
    target = meta.get("target_ratio", 0.80)
    lines = []
    for bench, sides in benches.items():
        res = {side: side_summary(rs) for side, rs in sides.items()}
        lines.append("")
        lines.append("%s  (%s)" % (bench, meta.get("benches", {}).get(bench, {}).get("what", "")))
        lines.append(
            "  %-7s %4s %9s %9s %9s  %7s %7s %7s %7s %7s %7s  %8s %7s %6s  %s"
            % ("side", "runs", "req/s med", "min", "max", "mean", "sd", "p50", "p90", "p99",
               "max", "cpu/req", "pg/req", "other", "verified")
        )
        for side in ["daemon", "echo"]:
            if side not in res:
                continue
            s = res[side]
            rq = s["req_per_s"]
            cpu = med(s, "server_cpu_us_per_req")
            pg = med(s, "postgres_cpu_us_per_req") if bench != "health" else None
            other = med(s, "other_load_pct")
            lines.append(
                "  %-7s %4d %9.0f %9.0f %9.0f  %7s %7s %7s %7s %7s %7s  %8s %7s %6s  %d/%d"
                % (side, s["runs"], rq["median"], rq["min"], rq["max"], fmt_us(med(s, "mean_us")),
                   fmt_us(med(s, "sd_us")), fmt_us(med(s, "p50_us")), fmt_us(med(s, "p90_us")),
                   fmt_us(med(s, "p99_us")), fmt_us(med(s, "max_us")),
                   "%.1fus" % cpu if cpu is not None else "-",
                   "%.1fus" % pg if pg is not None else "-",
                   "%.0f%%" % other if other is not None else "-", s["verified_runs"], s["runs"])
            )
        if "daemon" in res and "echo" in res:
            ratio = res["daemon"]["req_per_s"]["median"] / res["echo"]["req_per_s"]["median"]
            per_run = []
            d_runs = sorted(sides["daemon"], key=lambda r: r["run"])
            e_runs = {r["run"]: r for r in sides["echo"]}
            for r in d_runs:
                if r["run"] in e_runs and e_runs[r["run"]]["req_per_s"]:
                    per_run.append(r["req_per_s"] / e_runs[r["run"]]["req_per_s"])
            res["ratio_daemon_over_echo"] = ratio
            res["ratio_per_run"] = per_run
            res["median_of_per_run_ratios"] = statistics.median(per_run) if per_run else None
            res["target_ratio"] = target
            res["meets_target"] = ratio >= target
            lines.append(
                "  ratio daemon/echo (medians): %.2f   target >= %.2f: %s\n"
                "  per run (neighbours in time): %s   their median: %s"
                % (ratio, target, "MET" if ratio >= target else "NOT MET",
                   " ".join("%.2f" % x for x in per_run),
                   "%.2f" % res["median_of_per_run_ratios"] if per_run else "-")
            )
            dc, ec = med(res["daemon"], "server_cpu_us_per_req"), med(res["echo"], "server_cpu_us_per_req")
            if dc and ec:
                res["cpu_ratio_echo_over_daemon"] = ec / dc
                lines.append(
                    "  server CPU per request: daemon %.1f us, echo %.1f us (echo/daemon %.2f: the "
                    "CPU-cost view; steadier than req/s, though outside load inflates it too)"
                    % (dc, ec, ec / dc)
                )
        if "daemon" in res and "echo" in res:
            do, eo = med(res["daemon"], "other_load_pct"), med(res["echo"], "other_load_pct")
            if do is not None and eo is not None and abs(do - eo) > 10:
                res["unequal_outside_load"] = True
                lines.append(
                    "  WARNING: the sides saw unequal outside load (median other %.0f%% vs %.0f%%):"
                    " the req/s ratio is unreliable; run again on a quieter machine" % (do, eo)
                )
        nd = sum(1 for r in discarded if r["bench"] == bench)
        if nd:
            res["discarded_runs"] = nd
            lines.append("  %d noisy run(s) discarded and repeated (other load above %s%%)"
                         % (nd, meta.get("settings", {}).get("max_other_load_pct", "?")))
        out["results"][bench] = res
    lines.append("")
    lines.append(
        "  latencies: medians over runs of h2load's per-run mean/sd/max and of p50/p90/p99 "
        "computed from its per-request log"
    )
    lines.append(
        "  cpu/req: server process CPU (all threads) per call; pg/req: Postgres backends' CPU per "
        "call; other: CPU used outside the benchmark, % of all cores"
    )
    bad = [r for r in runs if not r["verified"]]
    out["all_verified"] = not bad
    if bad:
        lines.append("  VERIFICATION FAILED:")
        for r in bad:
            lines.append("    %s %s run %d: %s" % (r["bench"], r["side"], r["run"],
                                                   "; ".join(r["problems"])))
    elif meta.get("settings", {}).get("mode") == "duration":
        lines.append(
            "  verified: every run's server count of OK calls lies between h2load's 'succeeded' "
            "and 'succeeded' + the calls in flight (timed runs)"
        )
    else:
        lines.append(
            "  verified: every run's h2load 'succeeded' equals the server's own count of OK calls"
        )
    print("\n".join(lines))
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")
    return 0 if not bad else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("frame")
    s.add_argument("input")
    s.add_argument("output")
    s = sub.add_parser("metrics")
    s.add_argument("file")
    s.add_argument("method")
    s = sub.add_parser("run")
    s.add_argument("--bench", required=True)
    s.add_argument("--side", required=True)
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--mode", choices=["requests", "duration"], required=True)
    s.add_argument("--h2load", required=True)
    s.add_argument("--log")
    s.add_argument("--server-ok", type=int, required=True)
    s.add_argument("--server-other", type=int, required=True)
    s.add_argument("--server-cancelled", type=int, default=0)
    s.add_argument("--in-flight", type=int, default=0,
                   help="timed runs: most calls in flight at once (connections x streams)")
    s.add_argument("--server-ticks", type=int, default=0)
    s.add_argument("--pg-ticks", type=int, default=0)
    s.add_argument("--h2load-ms", type=int, default=0)
    s.add_argument("--busy-ticks", type=int, default=0)
    s.add_argument("--total-ticks", type=int, default=0)
    s.add_argument("--clk-tck", type=int, default=0)
    s = sub.add_parser("summary")
    s.add_argument("--discarded")
    s.add_argument("runs")
    s.add_argument("meta")
    s.add_argument("output")
    args = p.parse_args()
    return {"frame": cmd_frame, "metrics": cmd_metrics, "run": cmd_run,
            "summary": cmd_summary}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
