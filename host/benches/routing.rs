//! Routing cost of the built-in exchanges as bindings grow: topic against direct.
//!
//! Topic bindings are a realistic mix of wildcard patterns: a couple of dozen broad ones
//! (`stock.nyse.*`, `eu.#.orders`, `eu.nyse.*.orders`) and then specific ones naming one of
//! 20,000 instruments (`#.sym42`, `*.lse.sym7.#`, `eu.#.sym9.orders`, plain keys), so that
//! 100,000 bindings are mostly distinct and a message reaches about one queue on average.
//! Each iteration routes one message, cycling through 1,024 pre-generated keys so that the walk
//! is not the same cached path every time. Direct routing over plain keys of the same shape is
//! the floor to compare with.
//!
//! Run: `cargo bench -p bourse --bench routing` (add `-- --quick` for a rough figure). Needs
//! `[[bench]] name = "routing"` with `harness = false` in `host/Cargo.toml`.

use std::hint::black_box;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use bourse::exchange::{Binding, Destination, Registry, Router, RoutingInput};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const KEYS: usize = 1024;

const REGIONS: &[&str] = &[
    "eu", "us", "asia", "latam", "africa", "oceania", "mena", "nordics",
];
const MARKETS: &[&str] = &[
    "nyse", "nasdaq", "lse", "euronext", "xetra", "tse", "hkex", "sse", "asx", "tsx", "six", "bse",
];
const KINDS: &[&str] = &["orders", "trades", "quotes", "cancels"];
/// Distinct instrument symbols.
const SYMBOLS: u64 = 20_000;
/// Bindings with broad patterns (`stock.nyse.*`, `eu.#.orders`, `eu.nyse.*.orders`).
const BROAD: usize = 24;

/// A small deterministic generator (xorshift64*), so every run benchmarks the same bindings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len() as u64) as usize]
    }

    fn symbol(&mut self) -> String {
        format!("sym{}", self.below(SYMBOLS))
    }
}

/// The first few bindings are broad monitoring subscriptions; the rest are specific
/// subscribers that name an instrument, so the fan-out per message stays realistic (a handful
/// of queues) while the trie grows with the number of bindings.
fn topic_pattern(rng: &mut Rng, i: usize) -> String {
    let (region, market, kind) = (rng.pick(REGIONS), rng.pick(MARKETS), rng.pick(KINDS));
    if i < BROAD {
        return match i % 3 {
            0 => format!("stock.{market}.*"),
            1 => format!("{region}.#.{kind}"),
            _ => format!("{region}.{market}.*.{kind}"),
        };
    }
    let symbol = rng.symbol();
    match rng.below(6) {
        0 => format!("#.{symbol}"),
        1 => format!("*.{market}.{symbol}.#"),
        2 => format!("stock.*.{symbol}"),
        3 => format!("{region}.#.{symbol}.{kind}"),
        4 => format!("{region}.{market}.{symbol}.{kind}"),
        _ => format!("stock.{market}.{symbol}"),
    }
}

fn routing_key(rng: &mut Rng) -> String {
    let (region, market, kind) = (rng.pick(REGIONS), rng.pick(MARKETS), rng.pick(KINDS));
    match rng.below(3) {
        0 => format!("stock.{market}.{}", rng.symbol()),
        1 => format!("{region}.{market}.{}.{kind}", rng.symbol()),
        _ => format!(
            "{region}.{market}.desk{}.{}.{kind}",
            rng.below(50),
            rng.symbol()
        ),
    }
}

fn direct_binding(rng: &mut Rng, _i: usize) -> String {
    direct_key(rng)
}

fn direct_key(rng: &mut Rng) -> String {
    format!("stock.{}.{}", rng.pick(MARKETS), rng.symbol())
}

/// A router of the given type with `n` bindings made by `pattern`, each to its own queue.
fn router(kind: &str, n: usize, pattern: fn(&mut Rng, usize) -> String) -> Box<dyn Router> {
    let ty = Registry::with_builtins().get(kind).expect("built-in type");
    let mut router = ty.create("bench", &FieldTable::default()).expect("router");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..n {
        router.add_binding(&Binding {
            destination: Destination::Queue(format!("q{i}").into()),
            routing_key: pattern(&mut rng, i).into(),
            arguments: FieldTable::default(),
        });
    }
    router
}

fn keys(make: fn(&mut Rng) -> String) -> Vec<String> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    (0..KEYS).map(|_| make(&mut rng)).collect()
}

/// Benchmarks one route per iteration over the cycling keys.
fn bench_routes(
    c: &mut Criterion,
    group: &str,
    kind: &str,
    pattern: fn(&mut Rng, usize) -> String,
    key: fn(&mut Rng) -> String,
) {
    let properties = BasicProperties::default();
    let keys = keys(key);
    let mut group = c.benchmark_group(group);
    for n in SIZES {
        let router = router(kind, n, pattern);
        let mut out = Vec::with_capacity(64);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &router, |b, router| {
            b.iter(|| {
                let input = RoutingInput {
                    exchange: "bench",
                    routing_key: &keys[i % KEYS],
                    properties: &properties,
                    body: b"",
                };
                i += 1;
                out.clear();
                router
                    .route(black_box(&input), &mut out)
                    .expect("built-in routers never fail");
                black_box(out.len())
            });
        });
    }
    group.finish();
}

fn topic(c: &mut Criterion) {
    bench_routes(c, "topic routing", "topic", topic_pattern, routing_key);
}

fn direct(c: &mut Criterion) {
    bench_routes(c, "direct routing", "direct", direct_binding, direct_key);
}

criterion_group!(benches, topic, direct);
criterion_main!(benches);
