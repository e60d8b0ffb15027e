"""How long a slow declare stalls the other publishers of a vhost (issue 10).

One connection publishes with confirms to a fanout exchange, one message at a time, and
records each publish-to-confirm latency. Meanwhile another connection declares an `x-slow`
exchange whose `init` spins to the broker's setup deadline (200 ms by default), `--declares`
times in a row, each on a fresh channel (the refused declare closes its channel with 406).
With `--what queue` it declares and deletes durable queues instead (directory creation and
definitions-log fsyncs).
Printed: the publisher's median, p99 and worst confirm latency before the declares (baseline)
and while they run, and how many confirms took over 50 ms.

Needs a running bourse whose plugin directory holds `x-slow.wasm` (plugins/build.sh), and pika:
  bourse --listen 127.0.0.1:5679 --data-dir /tmp/stall-data --plugin-dir <dir with x-slow.wasm>
  .venv/bin/python bench/topology_stall.py --port 5679
"""

import argparse
import statistics
import threading
import time

import pika


def publisher(port, stop, latencies, phase):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    ch.exchange_declare("stall-fast", "fanout")
    ch.queue_declare("stall-fast-q", auto_delete=False)
    ch.queue_bind("stall-fast-q", "stall-fast")
    ch.queue_purge("stall-fast-q")
    ch.confirm_delivery()
    while not stop.is_set():
        sent = time.perf_counter()
        ch.basic_publish("stall-fast", "", b"x")
        latencies[phase[0]].append(time.perf_counter() - sent)
    ch.queue_delete("stall-fast-q")
    conn.close()


def declarer(port, declares, spin_ms, what):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    outcomes = []
    for i in range(declares):
        ch = conn.channel()
        started = time.perf_counter()
        if what == "queue":
            # A durable queue: its directory and the definitions record, both fsynced.
            ch.queue_declare(f"stall-durable-{i}", durable=True)
            ch.queue_delete(f"stall-durable-{i}")
            ch.close()
            outcomes.append(("ok", time.perf_counter() - started))
            continue
        try:
            ch.exchange_declare(f"stall-slow-{i}", "x-slow", arguments={"spin-ms": spin_ms})
            outcome = "ok"
            ch.exchange_delete(f"stall-slow-{i}")
            ch.close()
        except pika.exceptions.ChannelClosedByBroker as e:
            outcome = str(e.reply_code)
        outcomes.append((outcome, time.perf_counter() - started))
    conn.close()
    return outcomes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--declares", type=int, default=20)
    ap.add_argument("--spin-ms", type=int, default=100_000, help="init spin (the deadline cuts it)")
    ap.add_argument("--baseline-secs", type=float, default=2.0)
    ap.add_argument("--what", choices=("plugin", "queue"), default="plugin",
                    help="declare x-slow exchanges, or durable queues (declare + delete)")
    args = ap.parse_args()

    latencies = {"baseline": [], "declaring": []}
    phase = ["baseline"]
    stop = threading.Event()
    t = threading.Thread(target=publisher, args=(args.port, stop, latencies, phase))
    t.start()
    time.sleep(args.baseline_secs)
    phase[0] = "declaring"
    outcomes = declarer(args.port, args.declares, args.spin_ms, args.what)
    stop.set()
    t.join()

    for name, values in latencies.items():
        ms = sorted(v * 1e3 for v in values)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        slow = sum(1 for v in ms if v > 50)
        print(f"{name:9}: {len(ms):6} confirms, median {statistics.median(ms):6.2f} ms, "
              f"p99 {p99:6.2f} ms, max {ms[-1]:7.2f} ms, {slow} over 50 ms")
    codes = sorted({o for o, _ in outcomes})
    took = [d * 1e3 for _, d in outcomes]
    print(f"declares : {len(outcomes)} ({', '.join(codes)}), each {min(took):.0f}-{max(took):.0f} ms")


if __name__ == "__main__":
    main()
