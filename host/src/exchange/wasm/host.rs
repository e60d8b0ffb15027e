//! What the host gives a plugin: the `logging`, `clock` and `state` imports, and WASI 0.2
//! linked with nothing behind it.
//!
//! Everything here is bounded: log lines are cut to 1 KiB (with a marker, see `output.rs`) and
//! rate-limited per exchange (the rest is dropped and counted); the `state` import is in
//! `state.rs`.
//!
//! WASI is linked *without blocking*. wasmtime-wasi's synchronous bindings wait for I/O by
//! entering a Tokio runtime (`Handle::block_on`), which panics on a Tokio worker thread, and
//! routing runs on one. So `wasi:io/poll` and the blocking stream calls are re-implemented here
//! on top of wasmtime-wasi's asynchronous ones, polled exactly once: the only streams a plugin
//! can reach (an empty stdin, and stdout/stderr going to the log) are always ready, and a
//! pollable that is not ready (a sleep) makes the call trap instead of stalling the broker.
//! No filesystem is preopened, and sockets are linked with TCP, UDP and name lookup disabled.
//! A component importing anything else is refused at load (the link error names the import).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{Level, event};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, OutputStream, Pollable, StreamError, StreamResult,
};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::v0_1::{clock, logging};
use crate::config::WasmLimits;
use crate::exchange::Name;
use crate::store::{PluginState, StateHandle};

/// Longest log line kept, in bytes (longer ones are cut at a character boundary and marked).
pub const LOG_LINE_MAX_BYTES: usize = super::output::TEXT_MAX_BYTES;

/// What one exchange's instances share, whichever instance or plugin version is serving:
/// names for the log, the limits, the log budget, the state store and the counters.
pub struct ExchangeCtx {
    /// The vhost of the exchange.
    pub vhost: Name,
    /// The exchange (empty for a scratch instance that only validates or describes).
    pub exchange: Name,
    /// The exchange type (the plugin's name).
    pub plugin: Name,
    /// The limits in force for this exchange when it was made (the deadline and memory cap
    /// come from `budget`, which may change).
    pub limits: WasmLimits,
    /// Its vhost's WASM budget.
    pub budget: Arc<super::budget::VhostBudget>,
    log: Mutex<LogBudget>,
    /// Its `state` store (`state.rs`), on disk for a durable exchange of a vhost with storage.
    pub(super) state: StateHandle,
}

impl ExchangeCtx {
    /// The context of a scratch instance (one that validates or describes), or of an
    /// exchange outside any vhost budget: a budget of its own from `limits`.
    pub fn new(vhost: &str, exchange: &str, plugin: &str, limits: WasmLimits) -> Arc<Self> {
        let budget = super::budget::VhostBudget::new(
            vhost,
            super::budget::BudgetLimits::of(&limits, u32::MAX),
        );
        let state = PluginState::memory().attach(exchange, false);
        Self::in_budget(vhost, exchange, plugin, limits, budget, state)
    }

    /// The shared context of one exchange of a vhost with `budget`, keeping its plugin
    /// state in `state`.
    pub fn in_budget(
        vhost: &str,
        exchange: &str,
        plugin: &str,
        limits: WasmLimits,
        budget: Arc<super::budget::VhostBudget>,
        state: StateHandle,
    ) -> Arc<Self> {
        let per_sec = f64::from(limits.log_lines_per_sec);
        Arc::new(Self {
            vhost: Name::from(vhost),
            exchange: Name::from(exchange),
            plugin: Name::from(plugin),
            log: Mutex::new(LogBudget::new(per_sec)),
            state,
            limits,
            budget,
        })
    }

    /// Logs one plugin line through the per-exchange budget.
    pub fn log(&self, level: Level, text: &str) {
        let text = super::output::bounded_to(text, LOG_LINE_MAX_BYTES);
        let dropped_before = {
            let mut budget = self.log.lock();
            let Some(dropped) = budget.take() else {
                return;
            };
            if budget.recent.len() == RECENT_LOG_LINES {
                budget.recent.pop_front();
            }
            budget.recent.push_back(LogLine {
                at_ms: now_millis(),
                level: match level {
                    Level::ERROR => "error",
                    Level::WARN => "warn",
                    Level::INFO => "info",
                    Level::DEBUG => "debug",
                    Level::TRACE => "trace",
                },
                text: text.to_string(),
            });
            dropped
        };
        if dropped_before > 0 {
            event!(Level::WARN, exchange = %self.exchange, vhost = %self.vhost,
                plugin = %self.plugin, dropped = dropped_before, "plugin log lines dropped (rate limit)");
        }
        macro_rules! emit {
            ($level:expr) => {
                event!($level, exchange = %self.exchange, vhost = %self.vhost,
                    plugin = %self.plugin, "{text}")
            };
        }
        match level {
            Level::ERROR => emit!(Level::ERROR),
            Level::WARN => emit!(Level::WARN),
            Level::INFO => emit!(Level::INFO),
            Level::DEBUG => emit!(Level::DEBUG),
            Level::TRACE => emit!(Level::TRACE),
        }
    }

    /// The last log lines let through, oldest first.
    pub fn recent_logs(&self) -> Vec<LogLine> {
        self.log.lock().recent.iter().cloned().collect()
    }

    /// Log lines dropped so far by the rate limit and not yet reported.
    pub fn log_dropped(&self) -> u64 {
        self.log.lock().dropped
    }

    /// Number of entries in the state store.
    pub fn state_len(&self) -> usize {
        self.state.len()
    }
}

/// A token bucket of log lines, and the last lines let through.
struct LogBudget {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
    dropped: u64,
    recent: VecDeque<LogLine>,
}

/// Log lines of an exchange kept for its stats.
pub const RECENT_LOG_LINES: usize = 32;

/// One plugin log line, as the management API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    /// The text, bounded to the log line limit.
    pub text: String,
}

impl LogBudget {
    /// A full bucket of five seconds' worth of lines.
    fn new(per_sec: f64) -> Self {
        Self {
            tokens: per_sec * 5.0,
            per_sec,
            burst: per_sec * 5.0,
            last: Instant::now(),
            dropped: 0,
            recent: VecDeque::new(),
        }
    }

    /// Takes a token: `Some(lines dropped since the last line let through)`, or `None` (drop).
    fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

/// The store data of one instance.
pub struct HostState {
    /// The exchange this instance serves.
    pub ctx: Arc<ExchangeCtx>,
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory, table and instance caps, enforced by the store's limiter.
    pub caps: Caps,
    /// Past the deadline: the thread CPU clock and time at the last deadline check.
    pub overrun: Option<(u64, Instant)>,
    /// Past the deadline: when it was first reached.
    pub overrun_since: Option<Instant>,
    /// Set by every call of the plugin into the `clock` or `state` imports or WASI's clocks
    /// and random: a `route` call that set it is not a pure function of its inputs, and its
    /// decision is never cached, whatever the plugin declared.
    pub impure: bool,
}

/// Which cap a call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapHit {
    /// A linear memory tried to grow past the memory cap (to this many bytes).
    Memory(usize),
    /// A table tried to grow past the table cap (to this many elements).
    Table(usize),
}

/// [`StoreLimits`] that remembers which cap was hit, so a trap can be explained.
pub struct Caps {
    limits: StoreLimits,
    /// The last cap hit, cleared by the caller before each call.
    pub hit: Option<CapHit>,
    /// The largest linear memory granted so far, in bytes.
    pub memory_bytes: usize,
}

impl ResourceLimiter for Caps {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.limits.memory_growing(current, desired, maximum);
        if matches!(verdict, Ok(true)) {
            self.memory_bytes = self.memory_bytes.max(desired);
        } else {
            self.hit = Some(CapHit::Memory(desired));
        }
        verdict
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.limits.table_growing(current, desired, maximum);
        if !matches!(verdict, Ok(true)) {
            self.hit = Some(CapHit::Table(desired));
        }
        verdict
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl HostState {
    /// Fresh store data: an empty WASI context whose stdout/stderr go to the exchange's log.
    pub fn new(ctx: Arc<ExchangeCtx>) -> Self {
        let memory = usize::try_from(ctx.budget.memory_max_bytes()).unwrap_or(usize::MAX);
        let table = usize::try_from(ctx.limits.table_elements_max).unwrap_or(usize::MAX);
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .table_elements(table)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        // No args, no environment, no preopened directories, no network, stdin empty.
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(LogSink {
                ctx: ctx.clone(),
                level: Level::INFO,
            })
            .stderr(LogSink {
                ctx: ctx.clone(),
                level: Level::WARN,
            })
            .build();
        Self {
            ctx,
            wasi,
            table: ResourceTable::new(),
            caps: Caps {
                limits,
                hit: None,
                memory_bytes: 0,
            },
            overrun: None,
            overrun_since: None,
            impure: false,
        }
    }
}

impl HostState {
    fn impure_clocks(&mut self) -> wasmtime_wasi::clocks::WasiClocksCtxView<'_> {
        self.impure = true;
        self.clocks()
    }

    fn impure_random(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        self.impure = true;
        self.wasi.random()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Links WASI 0.2 (without sockets, without blocking) and the `bourse:exchange` imports.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    type T = HostState;
    let l = linker;
    io::error::add_to_linker::<T, NoBlockIo>(l, |t| NoBlock(&mut t.table))?;
    sync_poll::add_to_linker::<T, NoBlockIo>(l, |t| NoBlock(&mut t.table))?;
    sync_streams::add_to_linker::<T, NoBlockIo>(l, |t| NoBlock(&mut t.table))?;
    // Each call to a clock or to randomness marks the call impure (see `HostState::impure`).
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::impure_clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::impure_clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::impure_random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::impure_random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::impure_random)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    // Nothing is preopened, so no descriptor ever exists for `types` to act on.
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    wasmtime_wasi::p2::bindings::sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(
        l,
        T::filesystem,
    )?;
    // Sockets are linked because toolchains import them (CPython does), but every way in is
    // shut: TCP, UDP and name lookup are disabled in the context, so no socket can exist.
    use wasmtime_wasi::p2::bindings::sockets;
    use wasmtime_wasi::p2::bindings::sync::sockets as sync_sockets;
    sockets::tcp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sockets::instance_network::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sockets::network::add_to_linker::<T, WasiSockets>(l, &Default::default(), T::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync_sockets::tcp::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync_sockets::udp::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync_sockets::udp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    super::v0_1::add_to_linker(l)?;
    Ok(())
}

/// The `HasData` of the bourse imports: they run on the store data itself.
pub struct Imports;

impl HasData for Imports {
    type Data<'a> = &'a mut HostState;
}

impl logging::Host for HostState {
    fn log(&mut self, level: logging::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            logging::Level::Trace => Level::TRACE,
            logging::Level::Debug => Level::DEBUG,
            logging::Level::Info => Level::INFO,
            logging::Level::Warn => Level::WARN,
            logging::Level::Error => Level::ERROR,
        };
        self.ctx.log(level, &message);
        Ok(())
    }
}

impl clock::Host for HostState {
    fn now_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(now_millis())
    }
}

/// Wall-clock milliseconds since the Unix epoch that never go backwards within this process.
pub fn now_millis() -> u64 {
    static LATEST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let before = LATEST.fetch_max(now, Ordering::Relaxed);
    before.max(now)
}

/// Polls a future once: the value if it is ready now.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

fn would_block() -> wasmtime::Error {
    wasmtime::Error::msg(
        "plugin tried to block (wasi:io wait on something not ready); blocking is not allowed in an exchange plugin",
    )
}

/// `wasi:io` on the resource table, without ever blocking the thread.
pub struct NoBlock<'a>(&'a mut ResourceTable);

/// The `HasData` of [`NoBlock`].
pub struct NoBlockIo;

impl HasData for NoBlockIo {
    type Data<'a> = NoBlock<'a>;
}

impl io::error::Host for NoBlock<'_> {}

impl io::error::HostError for NoBlock<'_> {
    fn to_debug_string(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<String> {
        io::error::HostError::to_debug_string(self.0, err)
    }

    fn drop(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<()> {
        io::error::HostError::drop(self.0, err)
    }
}

impl sync_poll::Host for NoBlock<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        ready_now(io::poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(would_block()))
    }
}

impl sync_poll::HostPollable for NoBlock<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        ready_now(io::poll::HostPollable::ready(self.0, pollable)).unwrap_or(Ok(false))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        ready_now(io::poll::HostPollable::block(self.0, pollable))
            .unwrap_or_else(|| Err(would_block()))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        io::poll::HostPollable::drop(self.0, pollable)
    }
}

impl sync_streams::Host for NoBlock<'_> {
    fn convert_stream_error(
        &mut self,
        err: StreamError,
    ) -> wasmtime::Result<sync_streams::StreamError> {
        sync_streams::Host::convert_stream_error(self.0, err)
    }
}

fn stream_would_block() -> StreamError {
    StreamError::Trap(would_block())
}

impl sync_streams::HostOutputStream for NoBlock<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        ready_now(io::streams::HostOutputStream::drop(self.0, stream))
            .unwrap_or_else(|| Err(would_block()))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        sync_streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        sync_streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        ready_now(io::streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        ready_now(
            io::streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        sync_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        sync_streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        ready_now(io::streams::HostOutputStream::blocking_flush(
            self.0, stream,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        sync_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        ready_now(io::streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }
}

impl sync_streams::HostInputStream for NoBlock<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        ready_now(io::streams::HostInputStream::drop(self.0, stream))
            .unwrap_or_else(|| Err(would_block()))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        sync_streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        ready_now(io::streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        sync_streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        ready_now(io::streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        sync_streams::HostInputStream::subscribe(self.0, stream)
    }
}

/// A plugin's stdout or stderr: lines into the exchange's log, through its budget.
struct LogSink {
    ctx: Arc<ExchangeCtx>,
    level: Level,
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogStream {
            ctx: self.ctx.clone(),
            level: self.level,
            line: Vec::new(),
            cut: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.3 uses this, and it is not linked.
        Box::new(tokio::io::sink())
    }
}

/// One open stdout/stderr stream: buffers a partial line (up to the line cap; the rest of the
/// line is counted, not kept).
struct LogStream {
    ctx: Arc<ExchangeCtx>,
    level: Level,
    line: Vec<u8>,
    cut: usize,
}

impl LogStream {
    fn emit(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            if self.cut > 0 {
                let cut = self.cut;
                self.ctx
                    .log(self.level, &format!("{text}…[{cut} bytes cut]"));
            } else {
                self.ctx.log(self.level, text);
            }
            self.line.clear();
            self.cut = 0;
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // The time spent here counts against the plugin's deadline: a chunk without a newline
        // (most of a long line) is found with core's memchr, not a byte-by-byte loop.
        if !bytes.contains(&b'\n') {
            let room = LOG_LINE_MAX_BYTES.saturating_sub(self.line.len());
            let kept = bytes.len().min(room);
            self.line.extend_from_slice(&bytes[..kept]);
            self.cut = self.cut.saturating_add(bytes.len() - kept);
            return Ok(());
        }
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ends_line) = match chunk.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (chunk, false),
            };
            let room = LOG_LINE_MAX_BYTES.saturating_sub(self.line.len());
            let kept = text.len().min(room);
            self.line.extend_from_slice(&text[..kept]);
            self.cut = self.cut.saturating_add(text.len() - kept);
            if ends_line {
                self.emit();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_allows_a_burst_then_the_rate() {
        let mut budget = LogBudget::new(10.0);
        let allowed = (0..100).filter(|_| budget.take().is_some()).count();
        assert_eq!(allowed, 50);
        assert_eq!(budget.dropped, 50);
        budget.last -= std::time::Duration::from_millis(500);
        assert_eq!(budget.take(), Some(50));
    }

    #[test]
    fn clock_never_goes_backwards() {
        let a = now_millis();
        let b = now_millis();
        assert!(b >= a && a > 1_600_000_000_000);
    }
}
