//! One route call through a WASM exchange against the same rule written natively.
//!
//! For `x-consistent-hash` and `x-modulus-hash` (the real components from `plugins/dist/`, run
//! `plugins/build.sh` first), ten bindings, routing key only:
//! - `native`: the rule as a Rust `Router` (same hash, same placement);
//! - `wasm`: through the WASM router with the decision cache off, keys cycling over 1,024, so
//!   every message crosses into the plugin;
//! - `wasm-cached`: the same with the cache on (what a plugin declaring `cacheable` gets).
//!
//! Plus `call/remove-binding`, a near-empty call into the instance (an unknown id): the floor
//! of crossing the boundary under an epoch deadline.
//!
//! Run: `cargo bench -p bourse --bench wasm_route` (add `-- --quick` for a rough figure).

use std::hint::black_box;
use std::path::PathBuf;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use bourse::config::Config;
use bourse::exchange::wasm::PluginManager;
use bourse::exchange::wasm::host::ExchangeCtx;
use bourse::exchange::wasm::runtime::{self, Runtime};
use bourse::exchange::{
    Binding, Destination, Invalid, Name, Registry, RouteError, Router, RoutingInput,
};
use criterion::{Criterion, criterion_group, criterion_main};

const BINDINGS: usize = 10;
const KEYS: usize = 1024;

fn dist(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run plugins/build.sh",
        path.display()
    );
    path
}

fn config(cache_entries: u32) -> Config {
    let mut config = Config {
        plugin_dir: Some(std::env::temp_dir()),
        data_dir: std::env::temp_dir().join("bourse-bench"),
        ..Config::default()
    };
    config.wasm.route_cache_entries = cache_entries;
    // Measuring cost, not limits: a generous deadline so that being descheduled on a busy
    // machine cannot fail a call.
    config.wasm.call_deadline_ms = 1000;
    config
}

/// A WASM router of type `name` with `BINDINGS` bindings of key `key`.
fn wasm_router(name: &str, key: &str, cache_entries: u32) -> Box<dyn Router> {
    let registry = Registry::default();
    let plugins = PluginManager::new(&config(cache_entries), registry.clone()).expect("engine");
    plugins.load(&dist(name)).expect("plugin loads");
    let ty = registry.get(name).expect("registered");
    let mut router = ty
        .create_in("/", "bench", &FieldTable::default())
        .expect("exchange");
    for i in 0..BINDINGS {
        router.add_binding(&binding(i, key));
    }
    router
}

fn binding(i: usize, key: &str) -> Binding {
    Binding {
        destination: Destination::Queue(Name::from(format!("q{i}"))),
        routing_key: Name::from(key),
        arguments: FieldTable::default(),
    }
}

/// `plugins/guest`'s hash.
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// x-modulus-hash natively: `hash64(key) % n` over the bindings in creation order.
#[derive(Default)]
struct NativeModulus(Vec<Binding>);

impl Router for NativeModulus {
    fn validate_binding(&self, _: &Binding) -> Result<(), Invalid> {
        Ok(())
    }
    fn add_binding(&mut self, binding: &Binding) {
        self.0.push(binding.clone());
    }
    fn remove_binding(&mut self, binding: &Binding) {
        self.0.retain(|b| !b.same_as(binding));
    }
    fn route(&self, m: &RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteError> {
        if !self.0.is_empty() {
            let i = hash64(m.routing_key.as_bytes()) % self.0.len() as u64;
            out.push(self.0[i as usize].destination.clone());
        }
        Ok(())
    }
}

/// x-consistent-hash natively: each binding owns `weight` consecutive buckets; jump
/// consistent hash of `hash64(key)` picks a bucket.
#[derive(Default)]
struct NativeConsistent {
    bindings: Vec<Binding>,
    /// Cumulative bucket ends, one per binding.
    ends: Vec<u64>,
}

impl Router for NativeConsistent {
    fn validate_binding(&self, _: &Binding) -> Result<(), Invalid> {
        Ok(())
    }
    fn add_binding(&mut self, binding: &Binding) {
        let weight: u64 = binding.routing_key.parse().unwrap_or(1);
        self.ends
            .push(self.ends.last().copied().unwrap_or(0) + weight);
        self.bindings.push(binding.clone());
    }
    fn remove_binding(&mut self, _: &Binding) {}
    fn route(&self, m: &RoutingInput<'_>, out: &mut Vec<Destination>) -> Result<(), RouteError> {
        let Some(&total) = self.ends.last() else {
            return Ok(());
        };
        let bucket = jump(hash64(m.routing_key.as_bytes()), total);
        let i = self.ends.partition_point(|&end| end <= bucket);
        out.push(self.bindings[i].destination.clone());
        Ok(())
    }
}

/// Lamping & Veach's jump consistent hash.
fn jump(mut key: u64, buckets: u64) -> u64 {
    let (mut b, mut j) = (0i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u64
}

fn route_all(c: &mut Criterion, name: &str, key: &str, native: Box<dyn Router>) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("order.{i}")).collect();
    let props = BasicProperties::default();
    let mut group = c.benchmark_group(format!("route/{name}"));
    let routers = [
        ("native", native),
        ("wasm", wasm_router(name, key, 0)),
        ("wasm-cached", wasm_router(name, key, 16_384)),
    ];
    for (label, mut router) in routers {
        if label == "native" {
            for i in 0..BINDINGS {
                router.add_binding(&binding(i, key));
            }
        }
        let mut out = Vec::with_capacity(4);
        let mut n = 0usize;
        group.bench_function(label, |b| {
            b.iter(|| {
                n = (n + 1) % KEYS;
                out.clear();
                let input = RoutingInput {
                    exchange: "bench",
                    routing_key: &keys[n],
                    properties: &props,
                    body: b"",
                };
                router.route(black_box(&input), &mut out).expect("routes");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn bench_route(c: &mut Criterion) {
    route_all(
        c,
        "x-consistent-hash",
        "1",
        Box::<NativeConsistent>::default(),
    );
    route_all(c, "x-modulus-hash", "any", Box::<NativeModulus>::default());
}

fn bench_call(c: &mut Criterion) {
    let config = config(0);
    let runtime = Runtime::shared(runtime::engine_settings(&config)).expect("engine");
    let bytes = std::fs::read(dist("x-modulus-hash")).expect("read");
    let version = runtime
        .prepare(
            &bytes,
            "bench",
            bourse::exchange::wasm::cache::ArtifactCache::for_config(&config).as_ref(),
            &config.wasm,
        )
        .expect("prepare");
    let ctx = ExchangeCtx::new("/", "bench", "x-modulus-hash", config.wasm.clone());
    let mut instance = version.instantiate(ctx).expect("instance");
    instance
        .init("bench", &FieldTable::default())
        .expect("call")
        .expect("init");
    c.bench_function("call/remove-binding", |b| {
        b.iter(|| instance.remove_binding(black_box(u64::MAX)).expect("call"))
    });
}

criterion_group!(benches, bench_route, bench_call);
criterion_main!(benches);
