//! The process-wide per-address table: one per gateway, shared by every worker thread.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

use hashbrown::HashTable;
use postern_config::LimitsConfig;

use crate::entry::{Entry, Key, Refusal, Worth};

/// Per-address state of every client postern has seen recently: open sessions, the
/// connection-rate bucket, failed logins and blocks (see the crate docs for the bound).
///
/// Sharded by a keyed hash of the address (SipHash with a per-process random key, so no
/// client can aim its addresses at one shard); each shard is a short critical section under
/// its own mutex: one lookup and a few additions. Workers contend only when two of them
/// admit addresses of the same shard at the same instant.
pub struct AddressTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
    shard_capacity: usize,
    untracked: AtomicU64,
}

/// One shard: `slots` holds the entries (never more than `shard_capacity`, never
/// shrinking: a slot is reused, not freed), `index` maps a key's hash to its slot.
struct Shard {
    index: HashTable<u32>,
    slots: Vec<Entry>,
    /// Where the next eviction scan starts (CLOCK): every slot is looked at in turn.
    hand: usize,
}

/// A connection admitted by [`AddressTable::admit`]: counts as one open session of its
/// address until dropped. Also where the session reports failed logins.
#[must_use = "the session counts against its address only while the permit lives"]
pub struct AddressPermit {
    /// `None`: the address is exempt, or was admitted untracked at the table's bound.
    tracked: Option<(Arc<AddressTable>, Key)>,
}

impl AddressTable {
    /// A table for at most `capacity` addresses (rounded up to a multiple of the shard
    /// count). Memory grows with the addresses seen, up to the bound, and stays there.
    pub fn new(capacity: usize) -> AddressTable {
        let shard_capacity = capacity.div_ceil(SHARDS).clamp(1, u32::MAX as usize);
        AddressTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        index: HashTable::new(),
                        slots: Vec::new(),
                        hand: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            shard_capacity,
            untracked: AtomicU64::new(0),
        }
    }

    /// The address table a gateway with `max_connections` needs: room for every session
    /// to come from its own address, plus [`SPARE_ENTRIES`] for addresses that hold no
    /// session but still carry state (a spent bucket, failed logins, a block).
    pub fn for_max_connections(max_connections: usize) -> AddressTable {
        AddressTable::new(max_connections.saturating_add(SPARE_ENTRIES))
    }

    /// Admits one new connection from `ip` under `limits` at `now`, or says why not.
    /// Exempt addresses are admitted without a look at the table.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &LimitsConfig,
        now: Instant,
    ) -> Result<AddressPermit, Refusal> {
        if limits.exempt.contains(ip) {
            return Ok(AddressPermit { tracked: None });
        }
        let key = Key::of(ip);
        let now_ms = self.ms(now);
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let Some(slot) = shard.slot_for(key, hash, now_ms, limits, self) else {
            // The shard is full of entries that must not be dropped (see the crate docs):
            // this connection is served under the process-wide limits only.
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return Ok(AddressPermit { tracked: None });
        };
        shard.slots[slot].admit(now_ms, limits)?;
        Ok(AddressPermit {
            tracked: Some((Arc::clone(self), key)),
        })
    }

    /// Addresses in the table now (at most [`AddressTable::capacity`]).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    /// Whether no address was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most addresses the table holds.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    /// Connections admitted without per-address accounting because their shard was full of
    /// entries that must be kept (open sessions, blocks). Zero unless the bound is reached.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Heap bytes the table holds now: slots and index, as allocated.
    pub fn memory_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.slots.capacity() * std::mem::size_of::<Entry>() + s.index.allocation_size()
            })
            .sum::<usize>()
            + std::mem::size_of::<Self>()
    }

    fn release(&self, key: Key) {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if let Some(slot) = shard.find(key, hash) {
            shard.slots[slot].release();
        }
    }

    fn login_failed(&self, key: Key, limits: &LimitsConfig, now: Instant) {
        let now_ms = self.ms(now);
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        // The entry is pinned by the permit's open session, so it is still there.
        if let Some(slot) = shard.find(key, hash) {
            shard.slots[slot].login_failed(now_ms, limits);
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // Bits the shard's own index does not use: hashbrown takes the low bits for the
        // position and the top 7 for its tag.
        let i = (hash >> 40) as usize & (SHARDS - 1);
        lock(&self.shards[i])
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

impl Shard {
    fn find(&self, key: Key, hash: u64) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| slots[i as usize].key == key)
            .map(|&i| i as usize)
    }

    /// The slot of `key`, made if needed: a new slot below the bound, else the slot of the
    /// entry least worth keeping among the next [`EVICTION_SCAN`] (never a pinned one).
    fn slot_for(
        &mut self,
        key: Key,
        hash: u64,
        now_ms: u64,
        limits: &LimitsConfig,
        table: &AddressTable,
    ) -> Option<usize> {
        if let Some(slot) = self.find(key, hash) {
            return Some(slot);
        }
        let slot = if self.slots.len() < table.shard_capacity {
            // Grown by doubling, but never past the bound.
            if self.slots.len() == self.slots.capacity() {
                let want = (self.slots.len() * 2).max(16).min(table.shard_capacity);
                self.slots.reserve_exact(want - self.slots.len());
            }
            self.slots.push(Entry::new(key, now_ms, limits));
            self.slots.len() - 1
        } else {
            let victim = self.victim(now_ms, limits)?;
            let old = self.slots[victim].key;
            let old_hash = table.hasher.hash_one(old);
            if let Ok(found) = self.index.find_entry(old_hash, |&i| i as usize == victim) {
                found.remove();
            }
            self.slots[victim] = Entry::new(key, now_ms, limits);
            victim
        };
        let slots = &self.slots;
        let hasher = &table.hasher;
        // `slot` < shard_capacity <= u32::MAX (see `new`).
        self.index.insert_unique(hash, slot as u32, |&i| {
            hasher.hash_one(slots[i as usize].key)
        });
        Some(slot)
    }

    fn victim(&mut self, now_ms: u64, limits: &LimitsConfig) -> Option<usize> {
        let n = self.slots.len();
        let mut best: Option<(Worth, usize)> = None;
        for step in 0..EVICTION_SCAN.min(n) {
            let i = (self.hand + step) % n;
            let worth = self.slots[i].worth(now_ms, limits);
            if worth < best.map_or(Worth::Pinned, |(w, _)| w) {
                best = Some((worth, i));
                if worth == Worth::Nothing {
                    break;
                }
            }
        }
        self.hand = (self.hand + EVICTION_SCAN) % n.max(1);
        best.map(|(_, i)| i)
    }
}

impl AddressPermit {
    /// A permit that counts nothing (for callers that bypass the table).
    pub fn untracked() -> AddressPermit {
        AddressPermit { tracked: None }
    }

    /// Reports a failed login of this session's client (the backend refused it): counts
    /// towards `auth_failures`, and may block the address (see [`Refusal::AuthFailures`]).
    pub fn login_failed(&self, limits: &LimitsConfig, now: Instant) {
        if let Some((table, key)) = &self.tracked {
            table.login_failed(*key, limits, now);
        }
    }

    /// Whether this connection is counted against its address.
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        if let Some((table, key)) = self.tracked.take() {
            table.release(key);
        }
    }
}

impl std::fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressTable")
            .field("capacity", &self.capacity())
            .field("untracked", &self.untracked())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AddressPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressPermit")
            .field("tracked", &self.is_tracked())
            .finish()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Nothing inside a critical section can panic halfway through an update that matters
    // (integer and float arithmetic, slot writes); a poisoned shard is still consistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shards: a power of two, well above the worker count, so two workers rarely meet.
const SHARDS: usize = 16;

/// Slots looked at when a full shard needs one for a new address. With the table sized
/// by [`AddressTable::for_max_connections`], at most ~60 % of slots can be pinned by open
/// sessions, so 16 pinned in a row has a chance below 0.03 % per admission.
pub const EVICTION_SCAN: usize = 16;

/// Entries beyond `max_connections` (see [`AddressTable::for_max_connections`]).
pub const SPARE_ENTRIES: usize = 65_536;

#[cfg(test)]
mod tests;
