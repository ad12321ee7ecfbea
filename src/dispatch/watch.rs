//! Live events to the watchers of invocations, each watcher with a queue bounded in bytes.
//!
//! A watcher that stops reading (a console tab on a sleeping laptop, a stalled API client)
//! must not pin the output of a busy invocation in memory. So each watcher's queue holds at most
//! [`QUEUE_BYTES`] of events; an event that would not fit is not queued, the watcher is marked
//! lagging and told so once, and it catches up by replaying from the store (which has
//! everything committed), with no gap and no repeat: it skips bytes it already has by offset.

use crate::protocol::api::StreamEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Most bytes of events queued for one watcher: a few seconds of a fast stream.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// What counts against the queue for an event without output (a status): small, but not free,
/// so that a flood of statuses is bounded too.
const EVENT_OVERHEAD: usize = 256;

/// What a watcher receives.
#[derive(Debug)]
pub enum Live {
    Event(Arc<StreamEvent>),
    /// Events were left out: read the store to catch up, then carry on.
    Lagged,
}

/// The state a watcher shares with the publishers.
#[derive(Debug)]
struct Shared {
    /// Bytes queued and not yet received.
    queued: AtomicUsize,
    /// Set when an event was left out; cleared by the watcher when it starts catching up.
    lagging: AtomicBool,
}

#[derive(Debug)]
struct Sender {
    id: u64,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Live>,
}

/// Every watcher, by invoke id.
#[derive(Debug, Default)]
pub struct Watchers {
    by_invocation: Mutex<HashMap<String, Vec<Sender>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One watcher's end: receives events until dropped (which unsubscribes it).
pub struct Subscription {
    id: u64,
    invoke_id: String,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Live>,
    watchers: Arc<Watchers>,
}

fn cost(event: &StreamEvent) -> usize {
    match event {
        StreamEvent::Output { data, .. } => data.len() + EVENT_OVERHEAD,
        _ => EVENT_OVERHEAD,
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Sender>>> {
        self.by_invocation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to an invocation's events. Subscribe before reading stored state, so nothing
    /// committed in between is missed (events are published after their commit).
    pub fn subscribe(self: &Arc<Self>, invoke_id: &str) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            lagging: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().entry(invoke_id.to_string()).or_default().push(Sender {
            id,
            shared: shared.clone(),
            tx,
        });
        Subscription {
            id,
            invoke_id: invoke_id.to_string(),
            shared,
            rx,
            watchers: self.clone(),
        }
    }

    /// Queues an event for every watcher of the invocation that has room for it.
    pub fn publish(&self, invoke_id: &str, event: StreamEvent) {
        let mut map = self.lock();
        let Some(senders) = map.get_mut(invoke_id) else {
            return;
        };
        let event = Arc::new(event);
        let cost = cost(&event);
        for sender in senders.iter() {
            let shared = &sender.shared;
            if shared.lagging.load(Ordering::Acquire) {
                continue;
            }
            if shared.queued.load(Ordering::Acquire) + cost > QUEUE_BYTES {
                shared.lagging.store(true, Ordering::Release);
                let _ = sender.tx.send(Live::Lagged);
                continue;
            }
            shared.queued.fetch_add(cost, Ordering::AcqRel);
            let _ = sender.tx.send(Live::Event(event.clone()));
        }
        senders.retain(|s| !s.tx.is_closed());
        if senders.is_empty() {
            map.remove(invoke_id);
        }
    }

    /// Tells the watchers of an invocation to catch up from the store (it changed where no
    /// event of this process saw it: on another replica).
    pub fn nudge(&self, invoke_id: &str) {
        let map = self.lock();
        for sender in map.get(invoke_id).into_iter().flatten() {
            if !sender.shared.lagging.swap(true, Ordering::AcqRel) {
                let _ = sender.tx.send(Live::Lagged);
            }
        }
    }

    /// [`Watchers::nudge`] for every invocation watched.
    pub fn nudge_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.nudge(&id);
        }
    }

    /// Whether anyone watches the invocation.
    pub fn is_watched(&self, invoke_id: &str) -> bool {
        self.lock().contains_key(invoke_id)
    }

    /// Watchers subscribed now, to every invocation.
    pub fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Bytes queued for all watchers (counted once per watcher).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock()
            .values()
            .flatten()
            .map(|s| s.shared.queued.load(Ordering::Acquire))
            .sum()
    }
}

impl Subscription {
    fn received(&self, live: &Live) {
        match live {
            Live::Event(event) => {
                self.shared.queued.fetch_sub(cost(event), Ordering::AcqRel);
            }
            // From here on events are queued again; the watcher reads the store next, so an
            // event committed before that read is either in the store or in the queue (or both:
            // the watcher skips what it has).
            Live::Lagged => self.shared.lagging.store(false, Ordering::Release),
        }
    }

    /// Waits for the next event.
    pub async fn recv(&mut self) -> Option<Live> {
        let live = self.rx.recv().await?;
        self.received(&live);
        Some(live)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Live> {
        let live = self.rx.try_recv().ok()?;
        self.received(&live);
        Some(live)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.watchers.lock();
        if let Some(senders) = map.get_mut(&self.invoke_id) {
            senders.retain(|s| s.id != self.id);
            if senders.is_empty() {
                map.remove(&self.invoke_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OutputStream;
    use bytes::Bytes;

    fn output(offset: u64, len: usize) -> StreamEvent {
        StreamEvent::Output {
            instance_id: "i-1".into(),
            seq: None,
            offset,
            stream: OutputStream::Stdout,
            data: Bytes::from(vec![b'x'; len]),
        }
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_read_holds_at_most_its_bound_and_is_told_it_lagged() {
        let watchers = Arc::new(Watchers::default());
        let mut stalled = watchers.subscribe("t-1");
        let mut reader = watchers.subscribe("t-1");
        let chunk = 256 * 1024;
        let mut received = 0;
        for n in 0..200u64 {
            watchers.publish("t-1", output(n * chunk as u64, chunk));
            while let Some(Live::Event(_)) = reader.try_recv() {
                received += 1;
            }
        }
        assert_eq!(received, 200, "a watcher that reads gets every event");
        assert!(
            watchers.queued() <= QUEUE_BYTES,
            "queued {} bytes for a stalled watcher",
            watchers.queued()
        );
        let mut events = 0;
        let mut lagged = 0;
        while let Some(live) = stalled.try_recv() {
            match live {
                Live::Event(_) => events += 1,
                Live::Lagged => lagged += 1,
            }
        }
        assert_eq!(lagged, 1, "told once");
        assert!(events < 200 && events > 0);
        // Caught up: it is fed again.
        watchers.publish("t-1", output(0, 10));
        assert!(matches!(stalled.recv().await, Some(Live::Event(_))));
    }

    #[tokio::test]
    async fn a_dropped_subscription_unwatches() {
        let watchers = Arc::new(Watchers::default());
        let one = watchers.subscribe("t-1");
        assert!(watchers.is_watched("t-1"));
        drop(one);
        assert!(!watchers.is_watched("t-1"));
    }
}
