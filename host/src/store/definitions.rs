//! The definitions log: a vhost's durable topology as an append-only log of commands.
//!
//! `<vhost dir>/definitions.log` starts with an 8-byte header (`BDEF`, version u32 LE) and
//! holds framed records (see `frame`), one [`Definition`] each. Every append is written and
//! fdatasynced before [`DefinitionsLog::append`] returns: topology changes are rare, and a
//! `declare-ok` must mean the object survives a crash.
//!
//! A record's payload is a tag byte then the fields in order: strings as `u16 LE length +
//! UTF-8`, flags as one byte (bit 0 durable, bit 1 auto-delete, bit 2 internal/exclusive), a
//! destination kind as one byte (0 queue, 1 exchange), and argument tables in AMQP's own field
//! table encoding (amq-protocol's codec), which round-trips every value type exactly —
//! including the plugin arguments of WASM exchange types.
//!
//! The log keeps a model of the live objects. When it holds `compact_ratio` times more records
//! than live objects (and at least `compact_min_records`), it is rewritten as a snapshot of
//! those objects (exchanges, then queues, then bindings in creation order) into a temporary
//! file, fsynced, renamed over the log, and the directory fsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use amq_protocol::types::FieldTable;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;

use super::StoreError;
use super::record_log::RecordLog;

const HEADER: [u8; 8] = *b"BDEF\x01\x00\x00\x00";
const FILE_NAME: &str = "definitions.log";

const TAG_DECLARE_EXCHANGE: u8 = 1;
const TAG_DELETE_EXCHANGE: u8 = 2;
const TAG_DECLARE_QUEUE: u8 = 3;
const TAG_DELETE_QUEUE: u8 = 4;
const TAG_BIND: u8 = 5;
const TAG_UNBIND: u8 = 6;

const FLAG_DURABLE: u8 = 1;
const FLAG_AUTO_DELETE: u8 = 2;
const FLAG_INTERNAL_OR_EXCLUSIVE: u8 = 4;

/// A durable exchange as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDefinition {
    /// Exchange name.
    pub name: String,
    /// Exchange type name (`direct`, `topic`, a WASM type's name, ...).
    pub kind: String,
    /// Always true for logged exchanges; kept for completeness.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Declare arguments (a WASM type's plugin arguments among them).
    pub arguments: FieldTable,
}

/// A durable queue as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDefinition {
    /// Queue name.
    pub name: String,
    /// Always true for logged queues; kept for completeness.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Exclusive queues are never logged (they die with their connection); always false.
    pub exclusive: bool,
    /// Declare arguments (`x-message-ttl`, `x-max-length`, ...).
    pub arguments: FieldTable,
}

/// What a binding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestinationKind {
    /// queue.bind
    Queue,
    /// exchange.bind
    Exchange,
}

/// A binding from an exchange to a queue or an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDefinition {
    /// The source exchange.
    pub source: String,
    /// Whether `destination` names a queue or an exchange.
    pub destination_kind: DestinationKind,
    /// The destination's name.
    pub destination: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (headers matching, plugin binding arguments).
    pub arguments: FieldTable,
}

/// One topology command, as appended and replayed.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    /// exchange.declare of a durable exchange.
    DeclareExchange(ExchangeDefinition),
    /// exchange.delete (or auto-delete) of a durable exchange; its bindings go with it.
    DeleteExchange {
        /// Exchange name.
        name: String,
    },
    /// queue.declare of a durable queue.
    DeclareQueue(QueueDefinition),
    /// queue.delete (or auto-delete) of a durable queue; its bindings go with it.
    DeleteQueue {
        /// Queue name.
        name: String,
    },
    /// A binding between durable objects.
    Bind(BindingDefinition),
    /// Its removal.
    Unbind(BindingDefinition),
}

/// When the log is compacted.
#[derive(Debug, Clone)]
pub struct DefinitionsOptions {
    /// Never compact a log with fewer records than this.
    pub compact_min_records: u64,
    /// Compact when records exceed this many times the live objects.
    pub compact_ratio: u64,
}

impl Default for DefinitionsOptions {
    fn default() -> Self {
        DefinitionsOptions {
            compact_min_records: 1024,
            compact_ratio: 4,
        }
    }
}

/// The definitions log of one vhost. Not shared between threads by itself: the vhost keeps it
/// behind its lock. Appends block on an fsync (milliseconds): call them from a blocking
/// context (`tokio::task::spawn_blocking` or `block_in_place`) or accept the short stall.
#[derive(Debug)]
pub struct DefinitionsLog {
    log: RecordLog,
    live: Live,
    options: DefinitionsOptions,
}

impl DefinitionsLog {
    /// Opens (creating if needed) `<vhost_dir>/definitions.log` with default options; see
    /// [`DefinitionsLog::open_with`].
    pub fn open(vhost_dir: &Path) -> Result<(DefinitionsLog, Vec<Definition>), StoreError> {
        Self::open_with(vhost_dir, DefinitionsOptions::default())
    }

    /// Opens the log and returns its commands in order, to be applied to an empty vhost. A
    /// torn or damaged tail is reported, cut off, and the intact prefix kept.
    pub fn open_with(
        vhost_dir: &Path,
        options: DefinitionsOptions,
    ) -> Result<(DefinitionsLog, Vec<Definition>), StoreError> {
        let (log, payloads) = RecordLog::open(vhost_dir, FILE_NAME, HEADER)?;
        let mut log = DefinitionsLog {
            log,
            live: Live::default(),
            options,
        };
        let mut commands = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            match decode(payload) {
                Ok(def) => {
                    log.live.apply(&def);
                    commands.push(def);
                }
                Err(reason) => {
                    tracing::warn!(
                        file = %log.log.path().display(),
                        record = index,
                        records_skipped = payloads.len() - index,
                        reason,
                        "undecodable definitions record: it and the records after it are cut off"
                    );
                    log.log.rewrite(&payloads[..index])?;
                    break;
                }
            }
        }
        log.maybe_compact();
        Ok((log, commands))
    }

    /// Appends one command and fsyncs it; the log may then compact itself.
    pub fn append(&mut self, definition: &Definition) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(definition))
    }

    /// Appends several commands with a single fsync (all or, after a crash, a prefix of them).
    pub fn append_all(&mut self, definitions: &[Definition]) -> Result<(), StoreError> {
        let payloads = definitions
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.log.append_all(&payloads)?;
        for def in definitions {
            self.live.apply(def);
        }
        self.maybe_compact();
        Ok(())
    }

    /// The live topology as commands: exchanges, queues, then bindings in creation order.
    pub fn snapshot(&self) -> Vec<Definition> {
        self.live.snapshot()
    }

    /// Records in the file.
    pub fn records(&self) -> u64 {
        self.log.records()
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        self.log.path()
    }

    /// Rewrites the log as a snapshot of the live objects (atomically: temporary file,
    /// fsync, rename, directory fsync).
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let payloads = self
            .live
            .snapshot()
            .iter()
            .map(encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.log.rewrite(&payloads)
    }

    fn maybe_compact(&mut self) {
        let live = self.live.count().max(1);
        let records = self.log.records();
        if records >= self.options.compact_min_records
            && records > self.options.compact_ratio.saturating_mul(live)
        {
            let before = records;
            match self.compact() {
                Ok(()) => {
                    tracing::info!(file = %self.log.path().display(), before, after = self.log.records(), "definitions log compacted")
                }
                Err(error) => {
                    tracing::warn!(%error, "definitions log compaction failed; keeping the full log")
                }
            }
        }
    }
}

/// The live objects a log describes, for compaction.
#[derive(Debug, Default)]
struct Live {
    exchanges: BTreeMap<String, ExchangeDefinition>,
    queues: BTreeMap<String, QueueDefinition>,
    /// Bindings by creation sequence.
    bindings: BTreeMap<u64, BindingDefinition>,
    by_key: HashMap<BindingKey, u64>,
    by_source: HashMap<String, BTreeSet<u64>>,
    by_destination: HashMap<(DestinationKind, String), BTreeSet<u64>>,
    next: u64,
}

/// A binding's identity: source, destination, key and arguments (encoded).
type BindingKey = (String, DestinationKind, String, String, Vec<u8>);

fn binding_key(b: &BindingDefinition) -> BindingKey {
    (
        b.source.clone(),
        b.destination_kind,
        b.destination.clone(),
        b.routing_key.clone(),
        encode_table(&b.arguments).unwrap_or_default(),
    )
}

impl Live {
    fn count(&self) -> u64 {
        (self.exchanges.len() + self.queues.len() + self.bindings.len()) as u64
    }

    fn apply(&mut self, def: &Definition) {
        match def {
            Definition::DeclareExchange(e) => {
                self.exchanges.insert(e.name.clone(), e.clone());
            }
            Definition::DeleteExchange { name } => {
                self.exchanges.remove(name);
                let mut gone: Vec<u64> = Vec::new();
                gone.extend(self.by_source.get(name).into_iter().flatten());
                gone.extend(
                    self.by_destination
                        .get(&(DestinationKind::Exchange, name.clone()))
                        .into_iter()
                        .flatten(),
                );
                for seq in gone {
                    self.remove_binding(seq);
                }
            }
            Definition::DeclareQueue(q) => {
                self.queues.insert(q.name.clone(), q.clone());
            }
            Definition::DeleteQueue { name } => {
                self.queues.remove(name);
                let gone: Vec<u64> = self
                    .by_destination
                    .get(&(DestinationKind::Queue, name.clone()))
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                for seq in gone {
                    self.remove_binding(seq);
                }
            }
            Definition::Bind(b) => {
                let key = binding_key(b);
                if self.by_key.contains_key(&key) {
                    return;
                }
                let seq = self.next;
                self.next += 1;
                self.by_key.insert(key, seq);
                self.by_source
                    .entry(b.source.clone())
                    .or_default()
                    .insert(seq);
                self.by_destination
                    .entry((b.destination_kind, b.destination.clone()))
                    .or_default()
                    .insert(seq);
                self.bindings.insert(seq, b.clone());
            }
            Definition::Unbind(b) => {
                if let Some(&seq) = self.by_key.get(&binding_key(b)) {
                    self.remove_binding(seq);
                }
            }
        }
    }

    fn remove_binding(&mut self, seq: u64) {
        let Some(b) = self.bindings.remove(&seq) else {
            return;
        };
        self.by_key.remove(&binding_key(&b));
        if let Some(set) = self.by_source.get_mut(&b.source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(&b.source);
            }
        }
        let dest = (b.destination_kind, b.destination);
        if let Some(set) = self.by_destination.get_mut(&dest) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_destination.remove(&dest);
            }
        }
    }

    fn snapshot(&self) -> Vec<Definition> {
        let mut out = Vec::with_capacity(self.count() as usize);
        out.extend(
            self.exchanges
                .values()
                .cloned()
                .map(Definition::DeclareExchange),
        );
        out.extend(self.queues.values().cloned().map(Definition::DeclareQueue));
        out.extend(self.bindings.values().cloned().map(Definition::Bind));
        out
    }
}

/// Encodes a command's payload.
fn encode(def: &Definition) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64);
    match def {
        Definition::DeclareExchange(e) => {
            out.push(TAG_DECLARE_EXCHANGE);
            put_str(&mut out, &e.name)?;
            put_str(&mut out, &e.kind)?;
            out.push(flags(e.durable, e.auto_delete, e.internal));
            out.extend_from_slice(&encode_table(&e.arguments)?);
        }
        Definition::DeleteExchange { name } => {
            out.push(TAG_DELETE_EXCHANGE);
            put_str(&mut out, name)?;
        }
        Definition::DeclareQueue(q) => {
            out.push(TAG_DECLARE_QUEUE);
            put_str(&mut out, &q.name)?;
            out.push(flags(q.durable, q.auto_delete, q.exclusive));
            out.extend_from_slice(&encode_table(&q.arguments)?);
        }
        Definition::DeleteQueue { name } => {
            out.push(TAG_DELETE_QUEUE);
            put_str(&mut out, name)?;
        }
        Definition::Bind(b) | Definition::Unbind(b) => {
            out.push(if matches!(def, Definition::Bind(_)) {
                TAG_BIND
            } else {
                TAG_UNBIND
            });
            put_str(&mut out, &b.source)?;
            out.push(match b.destination_kind {
                DestinationKind::Queue => 0,
                DestinationKind::Exchange => 1,
            });
            put_str(&mut out, &b.destination)?;
            put_str(&mut out, &b.routing_key)?;
            out.extend_from_slice(&encode_table(&b.arguments)?);
        }
    }
    Ok(out)
}

fn flags(durable: bool, auto_delete: bool, third: bool) -> u8 {
    (u8::from(durable) * FLAG_DURABLE)
        | (u8::from(auto_delete) * FLAG_AUTO_DELETE)
        | (u8::from(third) * FLAG_INTERNAL_OR_EXCLUSIVE)
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len())
        .map_err(|_| StoreError::Invalid(format!("name of {} bytes is too long", s.len())))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// A field table in AMQP's wire encoding (u32 BE length, then the entries).
fn encode_table(table: &FieldTable) -> Result<Vec<u8>, StoreError> {
    use amq_protocol::frame::WriteContext;
    match gen_field_table(table)(WriteContext::from(Vec::new())) {
        Ok(ctx) => Ok(ctx.into_inner().0),
        Err(error) => Err(StoreError::Invalid(format!(
            "arguments cannot be encoded: {error}"
        ))),
    }
}

/// Reads fields off the front of a payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("definition record fields overrun the record");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = self.take(2)?;
        let len = u16::from_le_bytes([len[0], len[1]]);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "name is not UTF-8")
    }

    fn table(&mut self) -> Result<FieldTable, &'static str> {
        let Some(len) = self.buf.first_chunk::<4>() else {
            return Err("argument table cut short");
        };
        let len = u32::from_be_bytes(*len) as usize;
        let bytes = self.take(len.checked_add(4).ok_or("argument table too long")?)?;
        if crate::protocol::check_table(bytes).is_err() {
            return Err("argument table nests too deep");
        }
        match parse_field_table(bytes) {
            Ok(([], table)) => Ok(table),
            _ => Err("argument table does not decode"),
        }
    }

    fn flags(&mut self) -> Result<(bool, bool, bool), &'static str> {
        let f = self.byte()?;
        Ok((
            f & FLAG_DURABLE != 0,
            f & FLAG_AUTO_DELETE != 0,
            f & FLAG_INTERNAL_OR_EXCLUSIVE != 0,
        ))
    }
}

/// Decodes a command's payload; every length is checked, nothing panics.
fn decode(payload: &[u8]) -> Result<Definition, &'static str> {
    let mut r = Reader { buf: payload };
    let def = match r.byte()? {
        TAG_DECLARE_EXCHANGE => {
            let name = r.string()?;
            let kind = r.string()?;
            let (durable, auto_delete, internal) = r.flags()?;
            Definition::DeclareExchange(ExchangeDefinition {
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments: r.table()?,
            })
        }
        TAG_DELETE_EXCHANGE => Definition::DeleteExchange { name: r.string()? },
        TAG_DECLARE_QUEUE => {
            let name = r.string()?;
            let (durable, auto_delete, exclusive) = r.flags()?;
            Definition::DeclareQueue(QueueDefinition {
                name,
                durable,
                auto_delete,
                exclusive,
                arguments: r.table()?,
            })
        }
        TAG_DELETE_QUEUE => Definition::DeleteQueue { name: r.string()? },
        tag @ (TAG_BIND | TAG_UNBIND) => {
            let source = r.string()?;
            let destination_kind = match r.byte()? {
                0 => DestinationKind::Queue,
                1 => DestinationKind::Exchange,
                _ => return Err("unknown binding destination kind"),
            };
            let b = BindingDefinition {
                source,
                destination_kind,
                destination: r.string()?,
                routing_key: r.string()?,
                arguments: r.table()?,
            };
            if tag == TAG_BIND {
                Definition::Bind(b)
            } else {
                Definition::Unbind(b)
            }
        }
        _ => return Err("unknown definition tag"),
    };
    if !r.buf.is_empty() {
        return Err("trailing bytes after a definition");
    }
    Ok(def)
}

#[cfg(test)]
pub(crate) fn decode_for_test(payload: &[u8]) -> Result<Definition, &'static str> {
    decode(payload)
}

#[cfg(test)]
pub(crate) fn encode_for_test(def: &Definition) -> Vec<u8> {
    encode(def).expect("encodable")
}
