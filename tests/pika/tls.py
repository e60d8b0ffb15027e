#!/usr/bin/env python3
"""pika over AMQPS: PLAIN over TLS, EXTERNAL with a client certificate, and a client that
does not trust the server's certificate.

Usage: tls.py PORT CA_FILE CLIENT_CERT CLIENT_KEY USER PASSWORD OTHER_CA_FILE

The broker listens for TLS on 127.0.0.1:PORT with a certificate signed by CA_FILE, verifies
client certificates against the same CA, and accepts clients without one. CLIENT_CERT's
common name is USER. Exits 0 when every check passes; prints "ok: ..." per check.
"""

import ssl
import sys
import uuid

import pika
import pika.credentials
import pika.exceptions


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def params(port, context, credentials):
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        credentials=credentials,
        socket_timeout=5,
        blocked_connection_timeout=5,
        connection_attempts=1,
    )


def round_trip(conn, what):
    ch = conn.channel()
    q = "pika-tls-" + uuid.uuid4().hex[:8]
    ch.queue_declare(queue=q, exclusive=True)
    ch.basic_publish(exchange="", routing_key=q, body=what.encode())
    method, _props, body = ch.basic_get(queue=q, auto_ack=True)
    check(method is not None and body == what.encode(), what + ": publish and get")


def main(port, ca, cert, key, user, password, other_ca):
    port = int(port)

    plain = ssl.create_default_context(cafile=ca)
    conn = pika.BlockingConnection(
        params(port, plain, pika.PlainCredentials(user, password))
    )
    round_trip(conn, "PLAIN over TLS")
    conn.close()

    with_cert = ssl.create_default_context(cafile=ca)
    with_cert.load_cert_chain(cert, key)
    conn = pika.BlockingConnection(
        params(port, with_cert, pika.credentials.ExternalCredentials())
    )
    round_trip(conn, "EXTERNAL with a client certificate")
    conn.close()

    untrusting = ssl.create_default_context(cafile=other_ca)
    try:
        pika.BlockingConnection(params(port, untrusting, pika.PlainCredentials(user, password)))
        check(False, "a client that does not trust the server's CA is refused")
    except (ssl.SSLError, pika.exceptions.AMQPConnectionError) as error:
        # pika raises the ssl error itself, or wraps it, depending on where it fails.
        check("CERTIFICATE_VERIFY_FAILED" in repr(error),
              "a client that does not trust the server's CA fails verification")

    # EXTERNAL without a certificate: the broker does not offer the mechanism.
    try:
        pika.BlockingConnection(params(port, plain, pika.credentials.ExternalCredentials()))
        check(False, "EXTERNAL without a client certificate is refused")
    except pika.exceptions.AMQPConnectionError:
        check(True, "EXTERNAL without a client certificate is refused")

    print("all pika TLS checks passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 8:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(*sys.argv[1:])
