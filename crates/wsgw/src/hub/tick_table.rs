//! hub/tick_table.rs: every registered socket's `TickState` (connection_tick.rs) side by side
//! in one table, so the node-wide tick's once-a-second look at every socket reads contiguous
//! memory. Kept inside each `Connection`, that look took a cache miss or two per socket: 0.45
//! to 0.5 ms a tick at 5,000 idle sockets, twice this table's (docs/loadtest.md §16), and
//! fetching the lines ahead gained a quarter of it. A socket takes a slot when it is registered, leaves
//! the walk when it leaves the hub, and gives the slot back when it is dropped, so a socket that
//! is still winding down never shares its slot. The table keeps its peak size.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::Connection;
use super::connection::{TickNow, TickState};

/// Slots per chunk: the table grows a chunk at a time, and a slot never moves.
const CHUNK: usize = 256;

struct Slot {
    /// The socket's hub key while it is in the hub; 0 when the slot is free or its socket has
    /// left the hub (hub keys start at 1).
    key: AtomicU64,
    state: TickState,
    /// Set once the socket's `Arc` exists: the walk hands out only sockets it can still reach.
    conn: Mutex<Weak<Connection>>,
}

impl Slot {
    fn new() -> Self {
        Self {
            key: AtomicU64::new(0),
            state: TickState::new(),
            conn: Mutex::new(Weak::new()),
        }
    }
}

struct Chunk {
    slots: Box<[Slot]>,
}

impl Chunk {
    fn new(len: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..len).map(|_| Slot::new()).collect(),
        })
    }
}

/// The hub's table of tick states.
#[derive(Default)]
pub(super) struct TickTable {
    chunks: RwLock<Vec<Arc<Chunk>>>,
    /// Slots given back, by index over the whole table.
    free: Mutex<Vec<u32>>,
}

/// A socket's tick state: its slot in the hub's table, or, until it is registered, a slot of
/// its own.
pub(in crate::hub) struct TickRef {
    chunk: Arc<Chunk>,
    index: u32,
    /// The table the slot goes back to when this is dropped (`None`: a slot of its own).
    table: Option<Arc<TickTable>>,
}

impl TickRef {
    /// A slot of its own, outside any table (a socket not yet registered).
    pub(in crate::hub) fn own() -> Self {
        Self {
            chunk: Chunk::new(1),
            index: 0,
            table: None,
        }
    }

    fn slot(&self) -> &Slot {
        &self.chunk.slots[self.index as usize % CHUNK]
    }

    /// Takes the socket out of the tick's walk (it left the hub). Its state stays usable and
    /// its slot stays its own until it is dropped.
    pub(in crate::hub) fn unlist(&self) {
        let slot = self.slot();
        slot.key.store(0, Ordering::Release);
        *slot.conn.lock() = Weak::new();
    }
}

impl Deref for TickRef {
    type Target = TickState;
    fn deref(&self) -> &TickState {
        &self.slot().state
    }
}

impl Drop for TickRef {
    fn drop(&mut self) {
        if let Some(table) = &self.table {
            self.unlist();
            table.free.lock().push(self.index);
        }
    }
}

impl std::fmt::Debug for TickRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickRef").field("index", &self.index).finish()
    }
}

impl TickTable {
    /// A slot for the socket `key`, starting from the state `from` (its slot of its own).
    pub(super) fn take(self: &Arc<Self>, key: u64, from: &TickState) -> TickRef {
        // Popped in a statement of its own: `grow` takes the free list's lock too.
        let free = self.free.lock().pop();
        let index = free.unwrap_or_else(|| self.grow());
        let chunk = self.chunks.read()[index as usize / CHUNK].clone();
        let r = TickRef {
            chunk,
            index,
            table: Some(self.clone()),
        };
        r.slot().state.copy_from(from);
        r.slot().key.store(key, Ordering::Release);
        r
    }

    /// Adds a chunk; returns its first slot and frees the others.
    fn grow(&self) -> u32 {
        let mut chunks = self.chunks.write();
        let first = (chunks.len() * CHUNK) as u32;
        chunks.push(Chunk::new(CHUNK));
        drop(chunks);
        self.free.lock().extend((first + 1..first + CHUNK as u32).rev());
        first
    }

    /// Lets the walk reach `conn` (registered with a slot from [`TickTable::take`]).
    pub(super) fn bind(&self, conn: &Arc<Connection>) {
        *conn.tick.slot().conn.lock() = Arc::downgrade(conn);
    }

    /// The sockets in the hub that `ping` picks by key, or whose state is due at `now`: one
    /// pass over the table, reading no socket that is not picked.
    pub(super) fn walk(&self, now: TickNow, mut ping: impl FnMut(u64) -> bool) -> Vec<Arc<Connection>> {
        let mut picked = Vec::new();
        for chunk in self.chunks.read().iter() {
            for slot in chunk.slots.iter() {
                let key = slot.key.load(Ordering::Acquire);
                if key != 0
                    && (ping(key) || slot.state.due(now))
                    && let Some(c) = slot.conn.lock().upgrade()
                {
                    picked.push(c);
                }
            }
        }
        picked
    }

    /// Slots in the table (taken or free).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.chunks.read().len() * CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> TickNow {
        TickNow {
            mono_ms: crate::time::mono_ms(),
            epoch_s: crate::time::now_ms() / 1000,
            silence_ms: 60_000,
            leeway_s: 0,
        }
    }

    fn conn(table: &Arc<TickTable>, key: u64) -> Arc<Connection> {
        let mut c = Connection::new(Arc::from(format!("c{key}")), Arc::from("u"), 10, &[]);
        c.key = key;
        c.tick = table.take(key, &c.tick);
        let c = Arc::new(c);
        table.bind(&c);
        c
    }

    fn keys(v: Vec<Arc<Connection>>) -> Vec<u64> {
        let mut k: Vec<u64> = v.iter().map(|c| c.key()).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn the_walk_picks_by_key_and_by_state_and_skips_sockets_that_left() {
        let table = Arc::new(TickTable::default());
        let conns: Vec<_> = (1..=600).map(|k| conn(&table, k)).collect();
        assert_eq!(table.slots(), 3 * CHUNK, "grown a chunk at a time");
        assert_eq!(
            keys(table.walk(now(), |k| k % 100 == 0)),
            vec![100, 200, 300, 400, 500, 600]
        );
        conns[6].set_token_exp(Some(1));
        assert_eq!(keys(table.walk(now(), |_| false)), vec![7], "a due state is picked");
        conns[99].tick.unlist();
        conns[6].tick.unlist();
        assert_eq!(keys(table.walk(now(), |k| k % 100 == 0)), vec![200, 300, 400, 500, 600]);
        assert!(conns[6].tick_due(now()), "a socket out of the walk keeps its state");
    }

    #[test]
    fn a_slot_is_reused_only_after_its_socket_is_dropped_and_starts_from_the_new_state() {
        let table = Arc::new(TickTable::default());
        let a = conn(&table, 1);
        a.set_token_exp(Some(1));
        a.tick.unlist();
        let b = conn(&table, 2);
        assert_ne!(a.tick.index, b.tick.index, "an unlisted socket keeps its slot");
        let index = a.tick.index;
        drop(a);
        let c = conn(&table, 3);
        assert_eq!(c.tick.index, index, "a dropped socket's slot is taken again");
        assert!(!c.tick_due(now()), "with the new socket's state, not the old one's");
        assert_eq!(keys(table.walk(now(), |_| true)), vec![2, 3]);
        assert_eq!(table.slots(), CHUNK);
    }

    #[test]
    fn a_socket_registered_but_not_yet_bound_is_not_picked() {
        let table = Arc::new(TickTable::default());
        let own = TickRef::own();
        let r = table.take(5, &own);
        assert!(table.walk(now(), |_| true).is_empty());
        drop(r);
        assert_eq!(table.free.lock().len(), CHUNK, "its slot is back");
    }
}
