#!/usr/bin/env python3
"""Turns the JSON lines of bench/compare.sh into docs/performance.md.

Usage: report.py RESULTS.jsonl NOTES.md > performance.md
The machine description, date and parameters come from COMPARE_* environment variables set by
compare.sh. Ratios are bourse / RabbitMQ; the targets are those of issue 5, and for (j) and the backlog
memory rows those of issue 10.
"""

import json
import os
import sys

SCENARIOS = "abcdefghij"
# Rows of the main throughput table; (j) has its own table (its consumer starts after the window).
LOAD_SCENARIOS = "abcdefghi"
# Deliveries per published message, to tell a drained run from one that left a backlog.
FANOUT = {"e": 10}
# Issue 5's targets: minimum ratio bourse / RabbitMQ of msg per broker CPU-second (and msg/s).
TARGETS = {"a": 5, "b": 5, "c": 5, "e": 5, "f": 5, "g": 5, "d": 1.5}


def env(key, default="?"):
    return os.environ.get(key, default)


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[(r.get("broker_name"), r.get("scenario"))] = r
    return runs


def ok(r):
    """A load run that measured something."""
    return (
        r is not None
        and "failed" not in r
        and not r.get("timed_out")
        and r.get("received", 0) + r.get("sent", 0) > 0
    )


def rate(r):
    if r["params"]["consumers"] > 0:
        return r["received_rate"]
    return r["sent_rate"]


def per_cpu(r):
    b = r.get("broker")
    return b["msgs_per_cpu_s"] if b else None


def fmt_n(x):
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def fmt_ratio(a, b):
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}×"


def ms(us):
    return f"{us / 1000:.2f}" if us is not None else "n/a"


def notes_for(s, r):
    notes = []
    if r is None:
        return ["not run"]
    if "failed" in r:
        return ["failed: " + r["failed"][:160]]
    if r.get("timed_out"):
        notes.append("hit the hard timeout")
    if r.get("errors"):
        sample = (r.get("error_samples") or [""])[0][:120]
        notes.append(f"{r['errors']} errors ({sample})")
    expected = FANOUT.get(s, 1) * r.get("sent_total", 0)
    backlog = expected - r.get("received_total", 0)
    if r.get("params", {}).get("consumers", 0) > 0 and backlog > 0:
        notes.append(f"{backlog:,} not delivered by the end of the drain")
    window = r.get("window_s") or 1
    other = r.get("other_cpu_s")
    if other is not None and other / window > 0.3:
        notes.append(f"disturbed: other processes used {other / window:.1f} cores")
    return notes


def load_table(runs, brokers):
    out = []
    out.append(
        "| scenario | bourse msg/s | RabbitMQ msg/s | ratio | bourse msg per broker CPU-s "
        "| RabbitMQ msg per broker CPU-s | ratio | target (per CPU-s) | p99 latency ms bourse / RabbitMQ | notes |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for s in LOAD_SCENARIOS:
        rb = runs.get(("bourse", s))
        rr = runs.get(("rabbitmq", s))
        if rb is None and rr is None:
            continue
        b_ok, r_ok = ok(rb), ok(rr)
        b_rate = rate(rb) if b_ok else None
        r_rate = rate(rr) if r_ok else None
        b_cpu = per_cpu(rb) if b_ok else None
        r_cpu = per_cpu(rr) if r_ok else None
        target = TARGETS.get(s)
        if s == "h":
            target_txt = "p99 ≤ RabbitMQ"
            if b_ok and r_ok and rb.get("latency_us") and rr.get("latency_us"):
                met = rb["latency_us"]["p99"] <= rr["latency_us"]["p99"]
                target_txt += " — met" if met else " — **not met**"
        elif target:
            target_txt = f"≥ {target}×"
            if s == "d":
                target_txt += " with every confirm after a sync (see notes)"
            if b_cpu and r_cpu:
                target_txt += " — met" if b_cpu / r_cpu >= target else " — **not met**"
        else:
            target_txt = "—"
        lat = lambda r, ok_: ms(r["latency_us"]["p99"]) if ok_ and r.get("latency_us") else "n/a"
        notes = []
        for name, r in (("bourse", rb), ("RabbitMQ", rr)):
            n = notes_for(s, r)
            if n:
                notes.append(f"{name}: " + "; ".join(n))
        if s == "i":
            for name, key in (("bourse", "bourse"), ("RabbitMQ", "rabbitmq")):
                ri, ra = runs.get((key, "i")), runs.get((key, "a"))
                if ok(ri) and ok(ra) and per_cpu(ra):
                    notes.append(
                        f"{name} (i)/(a): {rate(ri) / rate(ra):.2f}× msg/s, "
                        f"{per_cpu(ri) / per_cpu(ra):.2f}× per CPU-s"
                    )
        desc = env(f"COMPARE_DESC_{s}", s)
        out.append(
            f"| ({s}) {desc} | {fmt_n(b_rate)} | {fmt_n(r_rate)} | {fmt_ratio(b_rate, r_rate)} "
            f"| {fmt_n(b_cpu)} | {fmt_n(r_cpu)} | {fmt_ratio(b_cpu, r_cpu)} | {target_txt} "
            f"| {lat(rb, b_ok)} / {lat(rr, r_ok)} | {'<br>'.join(notes)} |"
        )
    return out


def latency_table(runs):
    out = ["| broker | scenario | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | samples |"]
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, name in (("bourse", "bourse"), ("rabbitmq", "RabbitMQ")):
        r = runs.get((key, "h"))
        if ok(r) and r.get("latency_us"):
            l = r["latency_us"]
            out.append(
                f"| {name} | (h) 1,000 msg/s | {ms(l['p50'])} | {ms(l['p95'])} | {ms(l['p99'])} "
                f"| {ms(l['p999'])} | {ms(l['max'])} | {l['count']:,} |"
            )
    return out


def detail_table(runs):
    out = [
        "| broker | scen. | sent/s | confirmed/s | received/s | received / sent (total) | broker cores "
        "| broker msg/CPU-s | broker peak RSS MiB | tool cores | other cores | p50 / p99 ms | errors | load avg after |"
    ]
    out.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|")
    for key, name in (("bourse", "bourse"), ("rabbitmq", "RabbitMQ")):
        for s in SCENARIOS:
            r = runs.get((key, s))
            if r is None:
                continue
            if not ok(r):
                out.append(f"| {name} | {s} | n/a | | | | | | | | | | {r.get('errors', '')} | {r.get('loadavg_after', '')} |")
                continue
            w = r["window_s"] or 1
            b = r.get("broker") or {}
            l = r.get("latency_us") or {}
            out.append(
                f"| {name} | {s} | {fmt_n(r['sent_rate'])} | {fmt_n(r['confirmed_rate'])} "
                f"| {fmt_n(r['received_rate'])} | {r.get('received_total', 0):,} / {r.get('sent_total', 0):,} "
                f"| {b.get('cpu_util', 0):.2f} | {fmt_n(b.get('msgs_per_cpu_s'))} "
                f"| {b.get('rss_peak_kib', 0) / 1024:.0f} | {r.get('tool_cpu_s', 0) / w:.2f} "
                f"| {r.get('other_cpu_s', 0) / w:.2f} | {ms(l.get('p50'))} / {ms(l.get('p99'))} "
                f"| {r.get('errors', 0)} | {r.get('loadavg_after', '')} |"
            )
    return out


def memory_table(runs):
    def mib(kib):
        return f"{kib / 1024:.1f} MiB" if kib is not None else "n/a"

    rows = []
    b, r = runs.get(("bourse", "mem-idle")), runs.get(("rabbitmq", "mem-idle"))
    get = lambda x, k: x.get(k) if x and "failed" not in x else None
    rows.append(("idle broker RSS", get(b, "rss_before_kib"), get(r, "rss_before_kib"), mib))
    b, r = runs.get(("bourse", "mem-queues")), runs.get(("rabbitmq", "mem-queues"))
    rows.append(("RSS with 10,000 queues", get(b, "rss_after_kib"), get(r, "rss_after_kib"), mib))
    rows.append(("— per queue", get(b, "kib_per_queue"), get(r, "kib_per_queue"), lambda k: f"{k:.1f} KiB" if k is not None else "n/a"))
    b, r = runs.get(("bourse", "mem-conns")), runs.get(("rabbitmq", "mem-conns"))
    rows.append(("RSS with 1,000 idle connections (1 channel each)", get(b, "rss_after_kib"), get(r, "rss_after_kib"), mib))
    rows.append(("— per connection", get(b, "kib_per_connection"), get(r, "kib_per_connection"), lambda k: f"{k:.1f} KiB" if k is not None else "n/a"))
    out = ["| row | bourse | RabbitMQ | bourse / RabbitMQ (target ≤ 0.25) |", "|---|---:|---:|---:|"]
    for name, bv, rv, f in rows:
        ratio = "n/a"
        if bv is not None and rv:
            ratio = f"{bv / rv:.3f}" + (" — met" if bv / rv <= 0.25 else " — **not met**")
        out.append(f"| {name} | {f(bv)} | {f(rv)} | {ratio} |")
    extra = []
    for key, name in (("bourse", "bourse"), ("rabbitmq", "RabbitMQ")):
        c = runs.get((key, "mem-conns"))
        q = runs.get((key, "mem-queues"))
        if c and "failed" not in c:
            extra.append(
                f"{name}: 1,000 connections opened in {c['connect_s']:.1f} s, "
                f"RSS after closing them {mib(c.get('rss_closed_kib'))}, errors {c.get('errors', 0)}"
            )
        if q and "failed" not in q:
            extra.append(f"{name}: 10,000 queues declared in {q['declare_s']:.1f} s")
    return out, extra


def met(ok_):
    return " — met" if ok_ else " — **not met**"


def buffer_table(runs):
    """Scenario (j): publish with no consumer, then drain. Targets (issue 10): publish rate within
    20 % of (a)'s, broker peak RSS under 300 MiB, every message delivered once and in order."""
    out = [
        "| broker | publish msg/s (no consumer) | vs (a)'s publish msg/s (target ≥ 0.8×) "
        "| broker peak RSS MiB (target < 300) | RSS at end of publishing MiB | drain msg/s "
        "| drain s | delivered / sent | exactly once, in order | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for key, name in (("bourse", "bourse"), ("rabbitmq", "RabbitMQ")):
        r = runs.get((key, "j"))
        if r is None:
            continue
        if not ok(r):
            out.append(f"| {name} | n/a | | | | | | | | {'; '.join(notes_for('j', r))} |")
            continue
        a = runs.get((key, "a"))
        b = r.get("broker") or {}
        d = r.get("drain") or {}
        o = r.get("order") or {}
        vs_a = "n/a"
        if ok(a) and a.get("sent_rate"):
            x = r["sent_rate"] / a["sent_rate"]
            vs_a = f"{x:.2f}×" + (met(x >= 0.8) if key == "bourse" else "")
        peak = b.get("rss_peak_kib")
        peak_txt = "n/a" if peak is None else f"{peak / 1024:,.0f}"
        if key == "bourse" and peak is not None:
            peak_txt += met(peak / 1024 < 300)
        t1 = b.get("rss_t1_kib")
        if o:
            order = "yes" if o.get("exactly_once_in_order") else (
                f"**no**: {o.get('in_order', 0):,} in order, {o.get('gaps', 0):,} gaps "
                f"({o.get('skipped', 0):,} skipped), {o.get('behind', 0):,} behind"
            )
        else:
            order = "not checked"
        notes = notes_for("j", r)
        extra = r.get("received_total", 0) - r.get("sent_total", 0)
        if extra > 0:
            notes.append(
                f"{extra:,} more delivered than counted as sent: the publisher's last batch, "
                "written in part when the run stopped (a blocked write)"
            )
        out.append(
            f"| {name} | {fmt_n(r['sent_rate'])} | {vs_a} | {peak_txt} "
            f"| {'n/a' if t1 is None else f'{t1 / 1024:,.0f}'} | {fmt_n(d.get('rate'))} "
            f"| {d.get('secs', 0):.1f} | {r.get('received_total', 0):,} / {r.get('sent_total', 0):,} "
            f"| {order} | {'; '.join(notes)} |"
        )
    return out


def backlog_table(runs):
    """Queued transient 16 B messages, no consumer: RSS, and RSS growth per queued message."""
    big = env("COMPARE_BACKLOG", "10000000")
    rows = [
        (big, f"{int(big):,} queued (non-durable queue)", 300),
        ("100000", "100,000 queued (fits in RAM)", None),
    ]
    out = [
        "| backlog | bourse RSS MiB | bourse bytes per message | RabbitMQ RSS MiB "
        "| RabbitMQ bytes per message | target (bourse) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    notes = []
    for n, label, rss_target in rows:
        cells = []
        target = ""
        for key in ("bourse", "rabbitmq"):
            r = runs.get((key, f"mem-backlog-{n}"))
            bl = (r or {}).get("backlog") if r and "failed" not in r else None
            if not bl:
                cells += ["n/a", "n/a"]
                if r is not None:
                    notes.append(f"{key} {label}: " + "; ".join(notes_for("mem", r)))
                continue
            after, per = bl.get("rss_after_kib"), bl.get("bytes_per_message")
            cells.append("n/a" if after is None else f"{after / 1024:,.0f}")
            cells.append("n/a" if per is None else f"{per:,.0f}")
            if not bl.get("all_queued"):
                notes.append(
                    f"{key} {label}: only {bl.get('messages', 0):,} of {bl.get('sent', 0):,} "
                    f"queued when measured"
                )
            if key == "bourse":
                if rss_target is not None and after is not None:
                    target = f"RSS < {rss_target} MiB" + met(after / 1024 < rss_target)
                elif rss_target is None and per is not None:
                    target = "< 150 B per message" + met(per < 150)
        out.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    return out, notes


def main():
    runs = load(sys.argv[1])
    notes = ""
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        with open(sys.argv[2]) as f:
            notes = f.read()
    p = print
    p("# Performance: bourse and RabbitMQ on the same machine")
    p()
    p("Generated by `bench/compare.sh` (do not edit the tables by hand; notes come from")
    p("`bench/performance-notes.md`). Raw results: `" + env("COMPARE_RESULTS") + "`.")
    p()
    p("## Machine and run")
    p()
    p(f"- date: {env('COMPARE_STARTED')}")
    if env("COMPARE_MERGED", ""):
        p(f"- rows not re-run in this session come from the earlier run `{env('COMPARE_MERGED')}` "
          "(same machine, same binaries)")
    p(f"- CPU: {env('COMPARE_CPU')}, {env('COMPARE_NPROC')} cores (nproc); memory {env('COMPARE_MEM')}; Linux {env('COMPARE_KERNEL')}")
    p(f"- load average (1, 5, 15 min) before the run: {env('COMPARE_LOAD_BEFORE')}; after: {env('COMPARE_LOAD_AFTER')}")
    p(f"- bourse: {env('COMPARE_BOURSE_COMMIT')}, release build")
    p(f"- RabbitMQ: {env('COMPARE_RABBIT_VERSION')} (Debian package), Erlang {env('COMPARE_ERLANG_VERSION')}; "
      "default settings, loopback listener, `rabbitmq_consistent_hash_exchange` enabled")
    p(f"- each load scenario: {env('COMPARE_DURATION')} s of publishing, then at most {env('COMPARE_DRAIN')} s "
      "for consumers to drain; one broker running at a time; the load tool runs on the same 2 cores")
    p()
    p("**msg/s** is deliveries per second to consumers during the publishing window. **msg per broker")
    p("CPU-s** is every delivery of the run (window and drain) divided by the broker's own CPU time")
    p("(utime + stime from `/proc/PID/stat`) over the same span: on a 2-core machine where the load")
    p("tool competes with the broker, it is the fairer figure. Ratios are bourse / RabbitMQ.")
    p()
    p("## Throughput")
    p()
    for line in load_table(runs, None):
        p(line)
    p()
    p("## A buffer, then a consumer (j)")
    p()
    p(f"(j): {env('COMPARE_J_SECS', '30')} s of publishing (transient 16 B, one publisher, non-durable")
    p("queue) with no consumer, then one consumer with manual acks and prefetch 100 drains the queue")
    p(f"(at most {env('COMPARE_J_DRAIN', '300')} s). Each body carries its publisher's index and")
    p("sequence number after the send time; the consumer checks that every message arrives once, in")
    p("publish order (`bourse-perf --check-order`). Peak RSS is sampled every 100 ms over both phases.")
    p()
    for line in buffer_table(runs):
        p(line)
    p()
    p("## Latency at a fixed rate")
    p()
    for line in latency_table(runs):
        p(line)
    p()
    p("## Memory")
    p()
    table, extra = memory_table(runs)
    for line in table:
        p(line)
    p()
    for e in extra:
        p(f"- {e}")
    p()
    p("### Queued backlogs")
    p()
    table, bnotes = backlog_table(runs)
    for line in table:
        p(line)
    p()
    for e in bnotes:
        p(f"- {e}")
    if bnotes:
        p()
    p("One publisher sends transient 16 B messages to a non-durable queue with no consumer")
    p("(`bourse-perf load -y 0 -C N --backlog-rss`); once passive queue.declare reports all N queued")
    p("and the RSS has settled, bytes per message = (RSS after − RSS before publishing) / N.")
    p()
    p("Each memory row is measured on a freshly started broker: `bourse-perf idle` waits for the")
    p("broker's RSS (VmRSS) to settle, opens the connections (one channel each) or declares the")
    p("queues, waits for it to settle again, and divides the difference.")
    p()
    p("## Every run")
    p()
    p("*cores* are CPU-seconds per second of the publishing window: the broker's, the load tool's,")
    p("and everything else on the machine (other engineers' builds and tests: a large value marks")
    p("a disturbed run).")
    p()
    for line in detail_table(runs):
        p(line)
    p()
    p("## Commands")
    p()
    p("```sh")
    p("bench/compare.sh                 # builds, installs RabbitMQ if missing, runs everything, writes this file")
    p("# each scenario, against each broker (URI and PID filled in by the script):")
    for s in SCENARIOS:
        a = env(f"COMPARE_ARGS_{s}", "")
        if s == "j":
            p(f"bourse-perf load -z {env('COMPARE_J_SECS', '30')} --drain-secs {env('COMPARE_J_DRAIN', '300')} {a}   # (j)")
            continue
        p(f"bourse-perf load -z {env('COMPARE_DURATION')} --drain-secs {env('COMPARE_DRAIN')} {a}   # ({s})")
    p("bourse-perf idle -n 0 --hold-secs 0                 # idle RSS")
    p("bourse-perf idle -n 1 -u 10000 --hold-secs 2        # 10,000 queues")
    p("bourse-perf idle -n 1000 --hold-secs 5              # 1,000 idle connections")
    for n in (env("COMPARE_BACKLOG", "10000000"), "100000"):
        p(f"bourse-perf load -x 1 -y 0 -u 1 -s 16 -z 0 -C {n} --backlog-rss --drain-secs 300 --timeout-secs 1200   # queued backlog")
    p("```")
    p()
    if notes:
        p(notes.rstrip())


if __name__ == "__main__":
    main()
