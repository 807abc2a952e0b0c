//! The writer's view of mailbox records: what redb holds, plus everything
//! the writer has journaled or sent to the applier since.
//!
//! The writer decides every send against this view (token, quota, next
//! sequence number), so it must never lag behind the writer's own
//! decisions. An entry is loaded from redb the first time a mailbox is
//! needed and kept while the applier has not yet committed the last change
//! the writer made to it (`touched`, a writer sequence number compared with
//! the applier's applied one); after that it may be dropped, because redb
//! then says the same.

use std::collections::HashMap;

use chappe_proto::{ReceiveId, SendId};

use crate::error::StoreError;
use crate::reads::View;
use crate::records::MailboxRecord;

/// Entries kept before the writer drops the ones redb has caught up with.
const KEEP: usize = 4096;

pub(crate) struct Entry {
    pub rec: MailboxRecord,
    /// Deleted by a request the applier may not have committed yet.
    pub deleted: bool,
    /// The writer sequence number of the last change made here.
    pub touched: u64,
}

#[derive(Default)]
pub(crate) struct Overlay {
    boxes: HashMap<ReceiveId, Entry>,
    sends: HashMap<SendId, ReceiveId>,
}

impl Overlay {
    /// The mailbox a send id names, unless unknown or deleted.
    pub(crate) fn by_send(
        &mut self,
        view: &mut Option<View>,
        db: &redb::Database,
        send: &SendId,
    ) -> Result<Option<(ReceiveId, &mut Entry)>, StoreError> {
        let id = match self.sends.get(send) {
            Some(id) => *id,
            None => {
                let v = View::get(view, db)?;
                match v.send_route(send)? {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
        };
        Ok(self.by_id(view, db, &id)?.map(|e| (id, e)))
    }

    /// A mailbox's entry, unless unknown or deleted.
    pub(crate) fn by_id(
        &mut self,
        view: &mut Option<View>,
        db: &redb::Database,
        id: &ReceiveId,
    ) -> Result<Option<&mut Entry>, StoreError> {
        if !self.boxes.contains_key(id) {
            let Some(rec) = View::get(view, db)?.record(id)? else {
                return Ok(None);
            };
            self.sends.insert(rec.send_id, *id);
            self.boxes.insert(
                *id,
                Entry {
                    rec,
                    deleted: false,
                    touched: 0,
                },
            );
        }
        Ok(self.boxes.get_mut(id).filter(|e| !e.deleted))
    }

    /// Marks a mailbox deleted as of writer sequence number `seq`; its send
    /// id stops resolving at once.
    pub(crate) fn delete(&mut self, id: &ReceiveId, seq: u64) {
        if let Some(e) = self.boxes.get_mut(id) {
            e.deleted = true;
            e.touched = seq;
            self.sends.remove(&e.rec.send_id);
        }
    }

    /// Drops entries redb has caught up with, once there are many.
    pub(crate) fn trim(&mut self, applied: u64) {
        if self.boxes.len() <= 2 * KEEP {
            return;
        }
        let sends = &mut self.sends;
        self.boxes.retain(|_, e| {
            let keep = e.touched > applied;
            if !keep {
                sends.remove(&e.rec.send_id);
            }
            keep
        });
    }
}
