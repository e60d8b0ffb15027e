//! Expiry on a timer: one tokio task per queue that has something to expire (messages at the
//! head, or the queue itself under `x-expires`), started the first time something can expire
//! and woken only when an earlier deadline appears.

use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{DeathReason, Queue, QueueState};

/// What the timer task should do next.
enum Tick {
    Stop,
    Sleep(Option<Instant>),
}

impl Queue {
    /// Makes sure the timer task wakes by `at`, starting it if needed.
    pub(super) fn arm(&self, state: &mut QueueState, at: Instant) {
        if state.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        state.armed = Some(at);
        match &state.timer {
            Some(wake) => wake.notify_one(),
            None => {
                // Without a runtime (plain unit tests) nothing expires on its own.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let wake = Arc::new(Notify::new());
                    state.timer = Some(wake.clone());
                    runtime.spawn(run_timer(self.me.clone(), wake));
                }
            }
        }
    }

    /// The timer's work: expire messages at the head, expire the queue if unused, and say
    /// when to look again.
    fn housekeep(&self) -> Tick {
        let mut state = self.state.lock();
        if state.deleted {
            return Tick::Stop;
        }
        let now = Instant::now();
        let dead_lettering = self.args.dead_letter.is_some();
        let QueueState { ready, dead, .. } = &mut *state;
        ready.take_expired_heads(now, |entry| {
            if dead_lettering {
                dead.push((entry, DeathReason::Expired));
            } else {
                self.forget(entry.position);
            }
        });
        let mut next = if state.expiring {
            state.ready.next_expiry()
        } else {
            None
        };
        let mut expired = false;
        if let Some(expires) = self.args.expires
            && state.consumers.is_empty()
        {
            match state.last_used.checked_add(expires) {
                Some(at) if at <= now => expired = true,
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        state.armed = next;
        self.finish(state);
        if expired {
            match (self.host.get().and_then(Weak::upgrade), self.me.upgrade()) {
                (Some(host), Some(me)) => host.queue_expired(&me),
                _ => return Tick::Stop,
            }
        }
        Tick::Sleep(next)
    }
}

/// One task per queue that has something to expire: sleeps until the earliest deadline (or a
/// wake-up for an earlier one) and lets the queue do its housekeeping.
async fn run_timer(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let next = match queue.upgrade() {
            Some(queue) => match queue.housekeep() {
                Tick::Stop => return,
                Tick::Sleep(next) => next,
            },
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
