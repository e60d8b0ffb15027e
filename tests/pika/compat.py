#!/usr/bin/env python3
"""pika compatibility check: drives a broker with pika's BlockingConnection.

Usage: compat.py AMQP_URL

Exits 0 when every check passes, 1 on the first failed check, 3 when pika is missing.
Each passing check prints one "ok: ..." line.
"""

import sys
import uuid

try:
    import pika
    import pika.exceptions
except ImportError:
    print(
        "FAIL: pika is not importable; install it with "
        "`python3 -m venv .venv && .venv/bin/pip install pika`",
        file=sys.stderr,
    )
    sys.exit(3)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def props_equal(got, want):
    fields = [
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
        "user_id", "app_id", "cluster_id",
    ]
    return [f for f in fields if getattr(got, f) != getattr(want, f)]


def main(url):
    params = pika.URLParameters(url)
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    suffix = uuid.uuid4().hex[:8]
    ex = "pika-ex-" + suffix
    q = "pika-q-" + suffix

    ch.exchange_declare(exchange=ex, exchange_type="direct")
    ok = ch.queue_declare(queue=q)
    check(ok.method.queue == q and ok.method.message_count == 0, "queue.declare-ok names the queue")
    ch.queue_bind(queue=q, exchange=ex, routing_key="rk")
    check(True, "exchange.declare, queue.declare, queue.bind")

    ch.confirm_delivery()
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"str": "v", "int": 42, "neg": -7, "big": 2**40, "flag": True,
                 "list": [1, "two"], "nested": {"a": 1}},
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="600000",
        message_id="mid-1",
        timestamp=1700000000,
        type="compat",
        user_id="guest",
        app_id="pika-compat",
        cluster_id="c1",
    )
    # In confirm mode pika raises on nack or return, so returning normally means acked.
    ch.basic_publish(ex, "rk", b'{"hello": 1}', sent, mandatory=True)
    check(True, "confirmed publish with all 14 properties")

    got = None
    for method, props, body in ch.consume(q, inactivity_timeout=5):
        check(method is not None, "basic.deliver arrives within 5 s")
        got = (method, props, body)
        ch.basic_ack(method.delivery_tag)
        break
    ch.cancel()
    method, props, body = got
    check(body == b'{"hello": 1}', "delivered body is intact")
    check(method.exchange == ex and method.routing_key == "rk", "deliver carries exchange and key")
    check(not method.redelivered, "first delivery is not redelivered")
    diff = props_equal(props, sent)
    check(not diff, "properties round-trip (differing: %s)" % diff)

    ch.basic_publish(ex, "rk", b"g1")
    ch.basic_publish(ex, "rk", b"g2")
    method, _props, body = ch.basic_get(q)
    check(body == b"g1" and method.message_count == 1, "basic.get-ok with message_count 1")
    ch.basic_ack(method.delivery_tag)
    method, _props, body = ch.basic_get(q, auto_ack=True)
    check(body == b"g2" and method.message_count == 0, "basic.get-ok with message_count 0")
    method, _props, body = ch.basic_get(q)
    check(method is None and body is None, "basic.get-empty")

    try:
        ch.basic_publish(ex, "unbound-key", b"lost", mandatory=True)
        check(False, "mandatory unroutable publish is returned")
    except pika.exceptions.UnroutableError as e:
        returned = e.messages[0]
        check(returned.method.reply_code == 312 and returned.body == b"lost",
              "mandatory unroutable publish returned with 312 NO_ROUTE")

    ch2 = conn.channel()
    try:
        ch2.queue_declare(queue="pika-missing-" + suffix, passive=True)
        check(False, "passive declare of a missing queue fails")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 404, "passive declare of a missing queue closes the channel with 404")
    check(ch.is_open and conn.is_open, "channel error leaves the connection and other channels open")

    ok = ch.queue_delete(queue=q)
    check(ok.method.message_count == 0, "queue.delete-ok")
    ch.exchange_delete(exchange=ex)
    conn.close()
    check(True, "connection.close")
    print("all pika checks passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
