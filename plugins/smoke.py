"""Smoke test of the built plugins: loads every component of plugins/dist/ in wasmtime (the
`wasmtime` pip package, a stand-in for the broker's host) and exercises it through the WIT
exports, with toy host imports. Run by `build.sh --check`; the broker's own tests live in
tests/ and load the same files.

Usage: python smoke.py [DIST_DIR]
"""

import pathlib
import sys
import threading

import wasmtime
import wasmtime.component as cm

DIST = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "dist")
ROUTER = "bourse:exchange/router@0.1.0"
ROUTER_0_2 = "bourse:exchange/router@0.2.0"  # route answers a decision: ids and a delay
# The host's cap. A componentize-py component starts with about 12.3 MiB of it in use.
MEMORY_CAP = 16 << 20
EPOCH_TICK_S = 0.01
DEADLINE_TICKS = 200  # 2 s: generous, the point is only to end the hostile loops

config = wasmtime.Config()
config.epoch_interruption = True
engine = wasmtime.Engine(config)
ticker_stop = threading.Event()


def tick() -> None:
    while not ticker_stop.wait(EPOCH_TICK_S):
        engine.increment_epoch()


threading.Thread(target=tick, daemon=True).start()

failures: list[str] = []
passes = 0


def check(cond: bool, what: str) -> None:
    global passes
    if cond:
        passes += 1
    else:
        failures.append(what)
        print(f"  FAIL {what}")


def rec(**fields):
    r = cm.Record()
    for k, v in fields.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def table(**entries):
    return rec(entries=[rec(name=k.replace("_", "-"), value=v) for k, v in entries.items()],
               tables=[], arrays=[])


def s(text: str):
    return cm.Variant("long-string", text)


def props(**kw):
    names = ["content-type", "content-encoding", "delivery-mode", "priority", "correlation-id",
             "reply-to", "expiration", "message-id", "timestamp", "message-type", "user-id",
             "app-id", "cluster-id"]
    r = cm.Record()
    for n in names:
        setattr(r, n, kw.get(n.replace("-", "_")))
    return r


def message(routing_key="", headers=None, properties=None, body=None):
    return rec(exchange="ex", routing_key=routing_key, cc=[], properties=properties,
               headers=headers or table(), body_size=len(body or b""),
               body=body)


class Host:
    """The imports: a log sink, a settable clock and one exchange's key-value state."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []
        self.now = 1_000_000
        self.state: dict[str, bytes] = {}
        self.cap = 1000

    def linker(self) -> cm.Linker:
        linker = cm.Linker(engine)
        linker.add_wasip2()
        with linker.root() as root:
            with root.add_instance("bourse:exchange/types@0.1.0"):
                pass
            with root.add_instance("bourse:exchange/logging@0.1.0") as i:
                i.add_func("log", lambda _s, level, msg: self.logs.append((level, msg)))
            with root.add_instance("bourse:exchange/clock@0.1.0") as i:
                i.add_func("now-millis", lambda _s: self.now)
            with root.add_instance("bourse:exchange/state@0.1.0") as i:
                i.add_func("get", lambda _s, k: self.state.get(k))
                i.add_func("compare-and-swap", self.cas)
                i.add_func("keys", self.keys)
        return linker

    def cas(self, _s, key, expected, new):
        cur = self.state.get(key)
        exp = None if expected is None else bytes(expected)
        if cur != exp:
            return False
        if new is None:
            self.state.pop(key, None)
        elif key not in self.state and len(self.state) >= self.cap:
            return "full"
        else:
            self.state[key] = bytes(new)
        return True

    def keys(self, _s, after, limit):
        ks = sorted(k for k in self.state if after is None or k > after)
        return ks[: min(limit, 1024)]


_compiled: dict[pathlib.Path, cm.Component] = {}


def compiled(path: pathlib.Path) -> cm.Component:
    if path not in _compiled:
        _compiled[path] = cm.Component.from_file(engine, str(path))
    return _compiled[path]


class Plugin:
    def __init__(self, path: pathlib.Path, host: Host | None = None) -> None:
        self.host = host or Host()
        self.store = wasmtime.Store(engine)
        self.store.set_wasi(wasmtime.WasiConfig())
        self.store.set_limits(memory_size=MEMORY_CAP)
        component = compiled(path)
        self.store.set_epoch_deadline(DEADLINE_TICKS)
        self.instance = self.host.linker().instantiate(self.store, component)
        self.iface = (self.instance.get_export_index(self.store, ROUTER)
                      or self.instance.get_export_index(self.store, ROUTER_0_2))
        if self.iface is None:
            raise LookupError(f"no export {ROUTER} or {ROUTER_0_2}")

    def call(self, name: str, *args):
        self.store.set_epoch_deadline(DEADLINE_TICKS)
        idx = self.instance.get_export_index(self.store, name, self.iface)
        return self.instance.get_func(self.store, idx)(self.store, *args)

    def setup(self, args=None, bindings=()):
        inputs = self.call("init", "ex", args or table())
        for bid, key, *rest in bindings:
            self.call("add-binding", rec(id=bid, key=key, arguments=rest[0] if rest else table()))
        return inputs


def traps(f) -> bool:
    try:
        f()
    except (wasmtime.Trap, wasmtime.WasmtimeError):
        return True
    return False


def plugin(name: str, host: Host | None = None) -> Plugin:
    return Plugin(DIST / f"{name}.wasm", host)


def test_describe_names() -> None:
    for path in sorted(DIST.glob("x-*.wasm")):
        if path.stem == "x-wrong-major":
            continue
        d = Plugin(path).call("describe")
        check(d.name == path.stem, f"{path.name}: describe().name == {d.name!r}")


def test_modulus_hash_ports_agree() -> None:
    rust = plugin("x-modulus-hash")
    ports = {"x-py-modulus-hash": plugin("x-py-modulus-hash"),
             "x-js-modulus-hash": plugin("x-js-modulus-hash")}
    for p in (rust, *ports.values()):
        inputs = p.setup(bindings=[(10, ""), (20, ""), (30, "")])
        check(inputs.fields == {"routing-key"}, f"modulus inputs {inputs.fields}")
    check(rust.call("route", message("order.eu.42")) == [20], "x-modulus-hash pinned pick")
    for name, port in ports.items():
        same = all(rust.call("route", message(f"k{i}")) == port.call("route", message(f"k{i}"))
                   for i in range(200))
        check(same, f"x-modulus-hash and {name} agree on 200 keys")
    for p in (rust, *ports.values()):
        p.call("remove-binding", 20)
    for name, port in ports.items():
        check(rust.call("route", message("order.eu.42")) == port.call("route", message("order.eu.42")),
              f"{name}: ports agree after a removal")


def test_consistent_hash() -> None:
    p = plugin("x-consistent-hash")
    check(p.call("validate", table(hash_header=s("a"), hash_property=s("message_id"))) is not None,
          "consistent-hash: header and property are exclusive")
    check("greater than 0" in (p.call("validate-binding", rec(id=1, key="0", arguments=table())) or ""),
          "consistent-hash: weight 0 refused")
    p.setup(bindings=[(1, "1"), (2, "1"), (3, "2")])
    counts = {1: 0, 2: 0, 3: 0}
    for i in range(4000):
        out = p.call("route", message(f"user-{i}"))
        check(len(out) == 1, "consistent-hash routes to exactly one") if len(out) != 1 else None
        counts[out[0]] += 1
    check(800 < counts[1] < 1200 and 1700 < counts[3] < 2300, f"consistent-hash weights {counts}")
    h = plugin("x-consistent-hash")
    inputs = h.setup(table(hash_header=s("user")), [(5, "3"), (6, "3")])
    check(inputs.headers == cm.Variant("named", ["user"]), f"hash-header inputs {inputs.headers}")
    a = h.call("route", message("x", headers=table(user=s("alice"))))
    b = h.call("route", message("y", headers=table(user=s("alice"))))
    check(a == b and len(a) == 1, "hash-header ignores the routing key")
    check(h.call("route", message("x")) == [], "missing hash header: not routed")


def test_regex() -> None:
    p = plugin("x-regex")
    err = p.call("validate-binding", rec(id=1, key="(unclosed", arguments=table()))
    check(isinstance(err, str) and "invalid pattern" in err, f"regex error text {err!r}")
    p.setup(bindings=[(1, r"order\.(eu|us)\.\d+"), (2, "audit.*")])
    check(p.call("route", message("order.eu.42")) == [1], "regex full match")
    check(p.call("route", message("order.eu.42x")) == [], "regex anchored")
    m = message("nothing")
    m.cc = ["audit.log"]
    check(p.call("route", m) == [2], "regex routes on CC keys")


def test_json_route() -> None:
    p = plugin("x-json-route")
    inputs = p.setup(bindings=[
        (1, '$.type == "order" && $.total >= 100'),
        (2, "", table(x_json_path=s("$.customer.tier"), x_json_equals=s("gold"))),
    ])
    check(inputs.fields == {"body"}, f"json inputs {inputs.fields}")
    body = b'{"type":"order","total":150,"customer":{"tier":"gold"}}'
    check(p.call("route", message(body=body)) == [1, 2], "json predicates")
    check(p.call("route", message(body=b"<xml/>")) == [], "non-JSON body goes nowhere")
    check(p.call("route", message()) == [], "no body goes nowhere")


def test_header_expr() -> None:
    p = plugin("x-header-expr")
    err = p.call("validate-binding", rec(id=1, key="region = 'eu'", arguments=table()))
    check(isinstance(err, str) and "'=='" in err, f"header-expr error text {err!r}")
    p.setup(bindings=[(1, 'region == "eu" && priority >= 5'), (2, "exists(trace)")])
    h = table(region=s("eu"), priority=cm.Variant("uint8", 7))
    check(p.call("route", message(headers=h)) == [1], "header-expr typed comparison")
    check(p.call("route", message(headers=table(trace=cm.Variant("void")))) == [2], "exists()")


def test_dedup() -> None:
    host = Host()
    p = plugin("x-dedup", host)
    p.setup(table(x_cache_ttl=cm.Variant("int32", 1000)), [(1, ""), (2, "")])
    m = message(properties=props(message_id="m-1"))
    check(p.call("route", m) == [1, 2], "dedup: first copy routed")
    host.now += 500
    check(p.call("route", m) == [], "dedup: repeat within the window dropped")
    # A fresh instance (as after a trap) still remembers: the state is the host's.
    q = plugin("x-dedup", host)
    q.setup(table(x_cache_ttl=cm.Variant("int32", 1000)), [(1, ""), (2, "")])
    check(q.call("route", m) == [], "dedup: state survives instance replacement")
    host.now += 600
    check(q.call("route", m) == [1, 2], "dedup: routed again after the window")


def test_retry_backoff() -> None:
    p = plugin("x-retry-backoff")
    check(p.call("validate", table(x_backoff_base_ms=cm.Variant("int64", 5),
                                   x_backoff_max_ms=cm.Variant("int64", 1))) is not None,
          "retry-backoff: base above max is refused")
    p.setup(args=table(x_backoff_base_ms=cm.Variant("int64", 100)),
            bindings=[(1, "a"), (2, "b")])
    now = p.call("route", message("a"))
    check(list(now.bindings) == [1] and getattr(now, "delay-ms") == 0, f"retry-backoff first try {now}")
    death = rec(entries=[rec(name="x-death", value=cm.Variant("array", 0))],
                tables=[[rec(name="count", value=cm.Variant("int64", 3))]],
                arrays=[[cm.Variant("table", 0)]])
    later = p.call("route", message("b", headers=death))
    check(list(later.bindings) == [2] and getattr(later, "delay-ms") == 400, f"retry-backoff n=3 {later}")


def test_hostile() -> None:
    for name, what in (("x-panic", "panics"), ("x-loop", "hits the epoch deadline"),
                       ("x-membomb", "hits the memory cap")):
        p = plugin(name)
        p.setup(bindings=[(1, "")])
        check(traps(lambda: p.call("route", message("k"))), f"{name} traps ({what})")
    g = plugin("x-garbage")
    g.setup(bindings=[(1, ""), (2, "")])
    out = g.call("route", message("k"))
    check(bool(out) and not {1, 2} & set(out), f"x-garbage returns unbound ids {out}")
    slow = plugin("x-slow")  # slow only with a spin-ms argument: a fanout otherwise
    slow.setup(bindings=[(1, ""), (2, "")])
    check(sorted(slow.call("route", message("k"))) == [1, 2], "x-slow routes like a fanout")
    try:
        plugin("x-wrong-major")
        check(False, "x-wrong-major must not instantiate against 0.1 imports")
    except (wasmtime.WasmtimeError, LookupError):
        check(True, "")
    for name in ("not-a-component", "random-bytes"):
        try:
            plugin(name)
            check(False, f"{name} must not load")
        except wasmtime.WasmtimeError:
            check(True, "")


def main() -> int:
    for test in (test_describe_names, test_modulus_hash_ports_agree, test_consistent_hash,
                 test_regex, test_json_route, test_header_expr, test_dedup, test_retry_backoff,
                 test_hostile):
        print(f"{test.__name__}")
        try:
            test()
        except Exception as e:  # a crash is a failure of that test, not of the run
            failures.append(f"{test.__name__}: {type(e).__name__}: {e}")
            print(f"  FAIL {type(e).__name__}: {e}")
    ticker_stop.set()
    print(f"smoke: {passes} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
