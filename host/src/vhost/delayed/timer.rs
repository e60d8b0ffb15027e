//! The timer of one delayed exchange: a task that sleeps until the next due message or bucket
//! and then, on a blocking thread (reads, routing, store removals), loads or cascades the
//! buckets whose time has come and fires the messages that are due.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, warn};

use super::{
    At, Bucket, BucketKey, BucketStore, DelayedExchange, PAGING, SYNCED, Walk, decode_record,
    now_ms, record_due,
};
use crate::exchange::Name;
use crate::message::Message;
use crate::store::{Position, StoreError, StoredMessage};
use crate::vhost::{Routed, VHost};

/// Most messages fired per turn of the blocking worker, so deletion and shutdown are noticed.
const FIRE_BATCH: usize = 4096;
/// Longest sleep: the wall clock may jump.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Records read from a bucket at once when loading or cascading it.
const READ_BATCH: usize = 1024;

/// The timer task: runs until the exchange is deleted or the vhost is gone.
pub(super) async fn run(vhost: Weak<VHost>, x: Arc<DelayedExchange>) {
    loop {
        if x.deleted.load(Ordering::SeqCst) {
            return;
        }
        let next = x.next_action();
        let now = now_ms();
        if next <= now {
            let Some(vh) = vhost.upgrade() else { return };
            let worker = x.clone();
            let turn = tokio::task::spawn_blocking(move || worker.turn(&vh, now)).await;
            if turn.is_err() {
                warn!(exchange = %x.name, "delayed exchange timer turn panicked");
                tokio::time::sleep(MAX_SLEEP).await;
            }
            continue;
        }
        x.wake_at.store(next, Ordering::Relaxed);
        // A message or bucket that arrived between next_action and the store above: look again.
        if x.next_action() < next {
            continue;
        }
        let sleep = Duration::from_millis(next - now).min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = x.wake.notified() => {}
        }
    }
}

impl DelayedExchange {
    /// When the timer must next act: the first due message or bucket trigger.
    pub(super) fn next_action(&self) -> u64 {
        let state = self.state.lock();
        let message = state.heap.peek().map_or(u64::MAX, |e| e.0.due);
        let bucket = state.pending.keys().next().map_or(u64::MAX, |k| k.trigger);
        let strays = if state.strays.is_empty() { u64::MAX } else { 0 };
        message.min(bucket).min(strays)
    }

    /// One turn of work at `now`: buckets whose trigger passed, then due messages.
    pub(super) fn turn(&self, vhost: &VHost, now: u64) {
        self.wake_at.store(u64::MAX, Ordering::Relaxed);
        let strays = std::mem::take(&mut self.state.lock().strays);
        for bucket in strays {
            self.cascade(vhost, bucket, None, now);
        }
        loop {
            // Due messages first: a bucket's load or cascade may take a while.
            self.fire_due(vhost);
            let key = {
                let state = self.state.lock();
                match state.pending.keys().next() {
                    Some(k) if k.trigger <= now => *k,
                    _ => break,
                }
            };
            if self.deleted.load(Ordering::SeqCst) {
                return;
            }
            if key.level == 0 {
                self.load(key);
                continue;
            }
            // Taken in a statement of its own: the cascade locks the state again.
            let bucket = self.state.lock().pending.remove(&key);
            if let Some(bucket) = bucket {
                self.cascade(vhost, bucket, Some(key), now);
            }
        }
        self.fire_due(vhost);
    }

    /// Moves a level-0 bucket's messages into the heap (as positions). The bucket is marked
    /// loaded first, so messages placed in it meanwhile go straight to the heap; the walk reads
    /// only the records appended before.
    fn load(&self, key: BucketKey) {
        let snapshot: Vec<(usize, BucketStore)> = {
            let mut state = self.state.lock();
            let Some(bucket) = state.pending.remove(&key) else {
                return;
            };
            let snapshot = bucket
                .stores
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.clone().map(|h| (i, h)))
                .collect();
            match state.loaded.entry(key.index) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(bucket);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let held = o.get_mut();
                    held.count += bucket.count;
                    for (slot, store) in held.stores.iter_mut().zip(bucket.stores) {
                        if slot.is_none() {
                            *slot = store;
                        }
                    }
                }
            }
            snapshot
        };
        let mut entries = Vec::new();
        for (which, held) in &snapshot {
            let walked = walk(held, |position, stored| {
                if let Some(due) = record_due(&stored) {
                    entries.push((due, *which, position));
                }
            });
            if let Err(error) = walked {
                warn!(exchange = %self.name, %error, "cannot read a delayed bucket; messages lost");
            }
        }
        let mut state = self.state.lock();
        for (due, store, position) in entries {
            state.schedule(
                due,
                At::Stored {
                    index: key.index,
                    store,
                    position,
                },
            );
        }
    }

    /// Re-appends a higher-level bucket's messages into lower-level buckets, waits until the
    /// persistent copies are synced, then removes the bucket's stores.
    /// `turn_now` is the time the turn acts for: re-placing relative to an earlier clock (a
    /// clock stepping back) could put messages back into a bucket of the same level.
    /// Messages that fall due meanwhile are fired between batches.
    fn cascade(&self, vhost: &VHost, bucket: Bucket, key: Option<BucketKey>, turn_now: u64) {
        let mut moved = 0u64;
        let mut last_ticket = 0;
        for (which, held) in bucket.stores.iter().enumerate() {
            let Some(held) = held else { continue };
            let mut batch: Vec<StoredMessage> = Vec::with_capacity(READ_BATCH);
            let mut flush = |batch: &mut Vec<StoredMessage>| {
                let now = now_ms().max(turn_now);
                let mut state = self.state.lock();
                for stored in batch.drain(..) {
                    let Some(due) = record_due(&stored) else {
                        continue;
                    };
                    // Due already (a late cascade): into the first level-0 bucket, loaded now.
                    let due_at = due.max(now + 1);
                    match self.append(
                        &mut state,
                        now,
                        which,
                        due_at,
                        &stored.exchange,
                        &stored.routing_key,
                        &stored.raw_properties,
                        &stored.body,
                    ) {
                        Ok(ticket) => {
                            moved += 1;
                            if which == SYNCED {
                                last_ticket = last_ticket.max(ticket);
                            }
                        }
                        Err(error) => {
                            warn!(exchange = %self.name, %error, "cannot move a delayed message")
                        }
                    }
                }
            };
            let walked = walk(held, |_, stored| {
                batch.push(stored);
                if batch.len() >= READ_BATCH {
                    flush(&mut batch);
                    self.fire_due(vhost);
                }
            });
            flush(&mut batch);
            if let Err(error) = walked {
                warn!(exchange = %self.name, %error, "cannot read a delayed bucket; messages lost");
            }
        }
        // The copies must be on disk before the originals go.
        if last_ticket != 0
            && let Some(store) = &self.stores.synced
            && let Err(error) = store.wait_synced_blocking(last_ticket)
        {
            warn!(exchange = %self.name, %error, "delayed messages moved but not synced; originals kept");
            return;
        }
        let lost = bucket.count.saturating_sub(moved);
        if lost > 0 {
            self.waiting.fetch_sub(lost, Ordering::Relaxed);
        }
        for held in bucket.stores.into_iter().flatten() {
            if let Err(error) = held.store.delete() {
                warn!(exchange = %self.name, %error, "cannot remove a cascaded delayed bucket");
            }
        }
        debug!(exchange = %self.name, level = key.map(|k| k.level), moved, "delayed bucket cascaded");
    }

    /// Fires the messages due now, a batch at a time.
    fn fire_due(&self, vhost: &VHost) {
        let Ok(exchange) = vhost.exchange(&self.name) else {
            return;
        };
        if !exchange
            .delayed()
            .is_some_and(|d| std::ptr::eq(Arc::as_ptr(d), self))
        {
            return;
        }
        let mut routed = Routed::default();
        loop {
            let now = now_ms();
            let mut due = Vec::new();
            {
                let mut state = self.state.lock();
                while due.len() < FIRE_BATCH && state.heap.peek().is_some_and(|e| e.0.due <= now) {
                    let Some(Reverse(entry)) = state.heap.pop() else {
                        break;
                    };
                    let store = match &entry.at {
                        At::Stored { index, store, .. } => state
                            .loaded
                            .get(index)
                            .and_then(|b| b.stores[*store].as_ref())
                            .map(|h| h.store.clone()),
                        At::Memory(_) => None,
                    };
                    due.push((entry, store));
                }
            }
            if due.is_empty() {
                return;
            }
            let mut late = (0u64, 0u64, 0u64);
            let mut done: Vec<(u64, usize)> = Vec::new();
            for (entry, store) in due {
                if self.deleted.load(Ordering::SeqCst) {
                    return;
                }
                let (message, keys, decided) = match entry.at {
                    At::Memory(held) => *held,
                    At::Stored {
                        index,
                        store: which,
                        position,
                    } => {
                        let Some(store) = store else { continue };
                        let read = store
                            .read(position)
                            .and_then(decode_record)
                            .map(|d| (Arc::new(d.message), d.extra_keys, d.decided));
                        let out = match read {
                            Ok(out) => out,
                            Err(error) => {
                                warn!(exchange = %self.name, %error, "cannot read a delayed message; dropped");
                                done.push((index, which));
                                let _ = store.ack(position);
                                continue;
                            }
                        };
                        // Routed first, removed after.
                        self.route(vhost, &exchange, &out.0, &out.1, out.2, &mut routed);
                        if let Err(error) = store.ack(position) {
                            debug!(exchange = %self.name, %error, "delayed message not acknowledged in its bucket");
                        }
                        done.push((index, which));
                        late_sample(&mut late, now, entry.due);
                        continue;
                    }
                };
                self.route(vhost, &exchange, &message, &keys, decided, &mut routed);
                late_sample(&mut late, now, entry.due);
                done.push((u64::MAX, PAGING));
            }
            {
                let mut sampled = self.late.lock();
                sampled.0 += late.0;
                sampled.1 += late.1;
                sampled.2 = sampled.2.max(late.2);
            }
            self.waiting.fetch_sub(done.len() as u64, Ordering::Relaxed);
            self.retire(&done);
        }
    }

    /// Counts fired messages out of their loaded buckets; removes the stores of buckets left
    /// empty and whose time is past (no message can be placed in them any more).
    fn retire(&self, done: &[(u64, usize)]) {
        let mut empty: Vec<Bucket> = Vec::new();
        {
            let mut state = self.state.lock();
            let now = now_ms();
            for &(index, _) in done {
                if index == u64::MAX {
                    continue;
                }
                if let Some(bucket) = state.loaded.get_mut(&index) {
                    bucket.count = bucket.count.saturating_sub(1);
                }
            }
            let finished: Vec<u64> = state
                .loaded
                .iter()
                .filter(|(index, b)| b.count == 0 && (**index + 1) << super::LEVEL0_SHIFT <= now)
                .map(|(index, _)| *index)
                .collect();
            for index in finished {
                if let Some(bucket) = state.loaded.remove(&index) {
                    empty.push(bucket);
                }
            }
        }
        for bucket in empty {
            for held in bucket.stores.into_iter().flatten() {
                if let Err(error) = held.store.delete() {
                    debug!(exchange = %self.name, %error, "cannot remove a fired delayed bucket");
                }
            }
        }
    }

    /// Routes a fired message through the vhost from this exchange, as a publish to the
    /// underlying type would be routed; or, when a plugin `decided` it, puts it into the
    /// queues named by `extra_keys` that still exist, without routing (and so without calling
    /// the plugin, which would delay it again).
    fn route(
        &self,
        vhost: &VHost,
        exchange: &Arc<super::super::Exchange>,
        message: &Arc<Message>,
        extra_keys: &[Name],
        decided: bool,
        routed: &mut Routed,
    ) {
        if decided {
            routed.queues.clear();
            vhost.queues_named(extra_keys, &mut routed.queues);
            if routed.queues.is_empty() {
                self.unroutable.fetch_add(1, Ordering::Relaxed);
            }
            for queue in routed.queues.drain(..) {
                let _ = queue.publish(message.clone());
            }
            return;
        }
        let properties = message.properties();
        let mut keys: Vec<&str> = Vec::with_capacity(1 + extra_keys.len());
        keys.push(message.routing_key());
        keys.extend(extra_keys.iter().map(|k| &**k));
        vhost.route(exchange, message, &properties, &keys, routed);
        if routed.queues.is_empty() && routed.replies.is_empty() {
            self.unroutable.fetch_add(1, Ordering::Relaxed);
        }
        for queue in routed.queues.drain(..) {
            let _ = queue.publish(message.clone());
        }
        for reply in routed.replies.drain(..) {
            let _ = reply.deliver_reply(message);
        }
    }
}

fn late_sample(late: &mut (u64, u64, u64), now: u64, due: u64) {
    let ms = now.saturating_sub(due);
    late.0 += 1;
    late.1 += ms;
    late.2 = late.2.max(ms);
}

/// Calls `f` with every message of a bucket store, in store order.
fn walk(held: &BucketStore, mut f: impl FnMut(Position, StoredMessage)) -> Result<(), StoreError> {
    match &held.walk {
        Walk::Recovered(positions) => {
            let mut i = 0;
            while i < positions.len() {
                let run = held
                    .store
                    .read_run(positions[i], (positions.len() - i).min(READ_BATCH))?;
                let mut expected = positions[i];
                for stored in run {
                    if i >= positions.len() || positions[i] != expected {
                        break;
                    }
                    let len = stored.record_len();
                    f(expected, stored);
                    i += 1;
                    expected = Position::new(expected.segment(), expected.offset() + len);
                }
            }
            Ok(())
        }
        Walk::Appended { starts, count } => {
            let mut left = *count;
            for (n, start) in starts.iter().enumerate() {
                let mut at = *start;
                while left > 0 {
                    let run = match held.store.read_run(at, (left as usize).min(READ_BATCH)) {
                        Ok(run) => run,
                        // The end of this segment: the rest is in the next one.
                        Err(_) if n + 1 < starts.len() => break,
                        Err(e) => return Err(e),
                    };
                    for stored in run {
                        let len = stored.record_len();
                        f(at, stored);
                        left -= 1;
                        at = Position::new(at.segment(), at.offset() + len);
                        if left == 0 {
                            break;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
