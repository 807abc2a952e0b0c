//! Envelopes that are durable in the journal but not yet in redb, and
//! acknowledgements not yet applied there: what a read must add to redb's
//! answer, and take away from it.
//!
//! The writer publishes a batch here after its journal sync (never before:
//! nobody may see an envelope that a crash could still take back, or its
//! sequence number could be handed out twice). The applier releases
//! entries after the redb commit that made them redundant. Readers look
//! here *first* and open their redb snapshot *after*, so an entry that
//! moves from here into redb between the two is seen at least once, and an
//! acknowledgement is seen at least once as a tombstone or as a deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use chappe_proto::ReceiveId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Stored, not acknowledged.
    Live { expiry: u32, ciphertext: Bytes },
    /// Acknowledged (or expired), possibly still in redb.
    Gone,
}

/// What the writer needs to know about one sequence number of a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Live {
        len: u64,
    },
    Gone,
    /// Not here: either in redb or nowhere.
    Absent,
}

#[derive(Default)]
pub(crate) struct MemTable {
    boxes: Mutex<HashMap<ReceiveId, BTreeMap<u64, Slot>>>,
}

impl MemTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<ReceiveId, BTreeMap<u64, Slot>>> {
        // A panic while holding the lock leaves whole entries behind (every
        // change is one insert or remove), so the data is still usable.
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lookup(&self, id: &ReceiveId, seqs: &[u64]) -> Vec<Lookup> {
        let g = self.lock();
        let slots = g.get(id);
        seqs.iter()
            .map(|s| match slots.and_then(|m| m.get(s)) {
                Some(Slot::Live { ciphertext, .. }) => Lookup::Live {
                    len: u64::try_from(ciphertext.len()).unwrap_or(u64::MAX),
                },
                Some(Slot::Gone) => Lookup::Gone,
                None => Lookup::Absent,
            })
            .collect()
    }

    /// Publishes a synced batch: its new envelopes, and tombstones for
    /// everything it acknowledged or expired.
    pub(crate) fn publish(
        &self,
        live: impl IntoIterator<Item = (ReceiveId, u64, u32, Bytes)>,
        gone: impl IntoIterator<Item = (ReceiveId, u64)>,
    ) {
        let mut g = self.lock();
        for (id, seq, expiry, ciphertext) in live {
            g.entry(id)
                .or_default()
                .insert(seq, Slot::Live { expiry, ciphertext });
        }
        for (id, seq) in gone {
            g.entry(id).or_default().insert(seq, Slot::Gone);
        }
    }

    /// After a redb commit: `stored` envelopes are now in redb (their slot
    /// goes unless it has become a tombstone meanwhile), `removed` ones are
    /// gone from redb or were never written (their tombstone goes).
    pub(crate) fn release(
        &self,
        stored: impl IntoIterator<Item = (ReceiveId, u64)>,
        removed: impl IntoIterator<Item = (ReceiveId, u64)>,
    ) {
        let mut g = self.lock();
        for (id, seq) in stored {
            remove_if(&mut g, &id, seq, |s| matches!(s, Slot::Live { .. }));
        }
        for (id, seq) in removed {
            remove_if(&mut g, &id, seq, |s| matches!(s, Slot::Gone));
        }
    }

    /// A deleted mailbox takes everything with it.
    pub(crate) fn drop_mailbox(&self, id: &ReceiveId) {
        self.lock().remove(id);
    }

    /// What a fetch from `from` must merge with redb: slots in sequence
    /// order, stopping after `max_live` live ones (a later slot cannot
    /// change the first `max_live` results).
    pub(crate) fn snapshot(&self, id: &ReceiveId, from: u64, max_live: usize) -> Vec<(u64, Slot)> {
        let g = self.lock();
        let mut out = Vec::new();
        let mut live = 0usize;
        if let Some(m) = g.get(id) {
            for (seq, slot) in m.range(from..) {
                if live >= max_live {
                    break;
                }
                if matches!(slot, Slot::Live { .. }) {
                    live += 1;
                }
                out.push((*seq, slot.clone()));
            }
        }
        out
    }

    /// Slots held, for the check that nothing is left once all is applied.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    /// Live envelopes whose expiry hour has come, at most `limit`.
    pub(crate) fn expired(&self, now_hour: u32, limit: usize) -> Vec<(ReceiveId, u64)> {
        let g = self.lock();
        let mut out = Vec::new();
        for (id, m) in g.iter() {
            for (seq, slot) in m {
                if out.len() >= limit {
                    return out;
                }
                if let Slot::Live { expiry, .. } = slot
                    && crate::clock::is_expired(*expiry, now_hour)
                {
                    out.push((*id, *seq));
                }
            }
        }
        out
    }
}

fn remove_if(
    g: &mut HashMap<ReceiveId, BTreeMap<u64, Slot>>,
    id: &ReceiveId,
    seq: u64,
    pred: impl Fn(&Slot) -> bool,
) {
    if let Some(m) = g.get_mut(id) {
        if m.get(&seq).is_some_and(pred) {
            m.remove(&seq);
        }
        if m.is_empty() {
            g.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_release_and_tombstones() {
        let t = MemTable::default();
        let a = ReceiveId([1; 32]);
        let ct = Bytes::from_static(b"abc");
        t.publish([(a, 1, 9, ct.clone()), (a, 2, 9, ct.clone())], []);
        assert_eq!(
            t.lookup(&a, &[1, 2, 3]),
            [
                Lookup::Live { len: 3 },
                Lookup::Live { len: 3 },
                Lookup::Absent
            ]
        );
        // 1 is acknowledged before the applier stored it; 5 was in redb.
        t.publish([], [(a, 1), (a, 5)]);
        assert_eq!(t.lookup(&a, &[1, 5]), [Lookup::Gone, Lookup::Gone]);
        // The applier stored 1 and 2: 1 stays a tombstone, 2 goes.
        t.release([(a, 1), (a, 2)], []);
        assert_eq!(t.lookup(&a, &[1, 2]), [Lookup::Gone, Lookup::Absent]);
        let snap = t.snapshot(&a, 0, 10);
        assert_eq!(snap, [(1, Slot::Gone), (5, Slot::Gone)]);
        t.release([], [(a, 1), (a, 5)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn snapshot_stops_after_enough_live_slots() {
        let t = MemTable::default();
        let a = ReceiveId([1; 32]);
        t.publish((1..=10).map(|s| (a, s, 0, Bytes::new())), [(a, 3), (a, 20)]);
        let snap = t.snapshot(&a, 2, 3);
        let seqs: Vec<u64> = snap.iter().map(|s| s.0).collect();
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!(t.expired(1, 100).len(), 9);
        t.drop_mailbox(&a);
        assert_eq!(t.len(), 0);
    }
}
