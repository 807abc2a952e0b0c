//! The write-ahead journal: where a send becomes durable.
//!
//! A commit of the redb store writes a dozen scattered pages and syncs
//! them; appending the same batch to a preallocated file and syncing it
//! writes one contiguous run (measured on the CI disk: 98 µs for a 1 KiB
//! record against 163–216 µs for a one-envelope redb commit). So the
//! writer makes each batch durable here and answers, and the applier moves
//! the batches into redb later, in large transactions, where an envelope
//! that its owner has acknowledged meanwhile is never written at all.
//!
//! The journal is one file: a header block, then a ring of fixed size,
//! zero-filled when the file is created so that appends overwrite blocks
//! that already exist (an `fdatasync` then has no file metadata to write).
//! Positions are *virtual*: they grow without bound, the ring offset is
//! `pos % ring`. Records never straddle the end of the ring; a `Wrap`
//! record says the next one starts at the beginning. The writer never
//! overwrites a record the applier has not yet put into redb (`tail`).
//!
//! Recovery reads from the position the store recorded with its last
//! applied batch and stops at the first thing that is not a genuine, newer
//! record ([`record`] says what "genuine" means): a record the writer had
//! not finished syncing was never acknowledged to anyone. That is a *torn
//! tail*, and the normal end of a crash.
//!
//! But the same stop can also be *damage in the middle*: a record that
//! was synced and answered, and later changed on disk, with more records
//! after it. Truncating there would silently drop everything after it, so
//! recovery then looks further ([`Journal::later`]): through the rest of
//! the span the writer could have filled since the mark (it never runs
//! more than one ring ahead of it), for any genuine record newer than the
//! last one read. The MAC binds each record to its virtual position, so an
//! older lap's record, still in the ring, is never mistaken for one: only
//! this lap's records verify where they lie. A normal crash can leave no
//! such record, since each batch is written only after the one before was
//! synced; the one exception, a wrap marker torn while the record it
//! announces was written, the chain itself steps over (see `Scan::step`).
//! Whoever opens the store decides what a later record means (`crate::store`
//! refuses to start unless the operator accepts the loss).

pub(crate) mod record;

pub use record::KEY_LEN;

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use record::HeaderError;
use record::{
    ALIGN, FILE_HEADER, FileHeader, ID_LEN, Kind, RECORD_HEADER, RecordHeader, Sealer, VERSION,
    aligned,
};

/// What went wrong with the journal file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Header {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    #[error("{path}: the file is {len} bytes long, its header says {want}")]
    Length { path: PathBuf, len: u64, want: u64 },
}

/// Something the journal can be read from: the file, or (fuzzing, tests)
/// bytes in memory laid out the same way.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..)?.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One batch read back by recovery.
#[derive(Debug)]
pub(crate) struct Record {
    pub seq: u64,
    /// Where the next record starts.
    pub end: u64,
    pub payload: Bytes,
}

/// Reads the chain of records that starts at `from`, each newer than the
/// one before and than `after`. Stops (returns `None`) at the first thing
/// that is not such a record; `Some(Err)` only for I/O failures.
pub(crate) struct Scan<'r, R: ReadAt + ?Sized> {
    src: &'r R,
    sealer: Sealer,
    ring: u64,
    pos: u64,
    last: u64,
    /// Bytes still allowed: a chain can never be longer than the ring.
    budget: u64,
}

impl<R: ReadAt + ?Sized> Scan<'_, R> {
    /// Where the chain ended: the writer continues here.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// The sequence number of the last record read (or `after`).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last
    }

    /// The chain's next record. Where a wrap marker should be and is not
    /// (torn by the crash that interrupted its append, or damaged), the
    /// record it announced may still be whole at the start of the next lap,
    /// carrying the next number: that record is read, since only the
    /// writer could have put a genuine one there.
    fn step(&mut self) -> io::Result<Option<Record>> {
        loop {
            let off = self.pos % self.ring;
            let room = self.ring - off;
            if room < RECORD_HEADER as u64 {
                if !self.spend(room) {
                    return Ok(None);
                }
                self.pos += room;
                continue;
            }
            let found = genuine_at(self.src, &self.sealer, self.ring, self.pos)?;
            let (h, payload) = match found {
                Some((h, p)) if h.seq > self.last => (h, p),
                _ => {
                    let next_lap = self.pos + room;
                    let Some((h, p)) = genuine_at(self.src, &self.sealer, self.ring, next_lap)?
                    else {
                        return Ok(None);
                    };
                    if h.kind != Kind::Batch || h.seq != self.last + 1 || !self.spend(room) {
                        return Ok(None);
                    }
                    self.pos = next_lap;
                    (h, p)
                }
            };
            match h.kind {
                Kind::Wrap => {
                    if !self.spend(room) {
                        return Ok(None);
                    }
                    // The record that follows carries the same number.
                    self.last = h.seq - 1;
                    self.pos += room;
                }
                Kind::Batch => {
                    let size = aligned(RECORD_HEADER as u64 + u64::from(h.len));
                    if !self.spend(size) {
                        return Ok(None);
                    }
                    self.last = h.seq;
                    self.pos += size;
                    return Ok(Some(Record {
                        seq: h.seq,
                        end: self.pos,
                        payload,
                    }));
                }
            }
        }
    }

    fn spend(&mut self, n: u64) -> bool {
        match self.budget.checked_sub(n) {
            Some(b) => {
                self.budget = b;
                true
            }
            None => false,
        }
    }
}

/// The record at virtual position `pos`, if this journal wrote one there:
/// its header and payload. Reads the payload only when the header is laid
/// out as one and the record fits in what is left of the lap.
fn genuine_at<R: ReadAt + ?Sized>(
    src: &R,
    sealer: &Sealer,
    ring: u64,
    pos: u64,
) -> io::Result<Option<(RecordHeader, Bytes)>> {
    let off = pos % ring;
    let room = ring - off;
    if room < RECORD_HEADER as u64 {
        return Ok(None);
    }
    let mut raw = [0u8; RECORD_HEADER];
    src.read_exact_at(&mut raw, FILE_HEADER + off)?;
    let Some(h) = Sealer::parse(&raw) else {
        return Ok(None);
    };
    verify_at(src, sealer, ring, pos, &raw, h)
}

/// [`genuine_at`] once the header is read and parsed.
fn verify_at<R: ReadAt + ?Sized>(
    src: &R,
    sealer: &Sealer,
    ring: u64,
    pos: u64,
    raw: &[u8; RECORD_HEADER],
    h: RecordHeader,
) -> io::Result<Option<(RecordHeader, Bytes)>> {
    let off = pos % ring;
    let len = u64::from(h.len);
    if aligned(RECORD_HEADER as u64 + len) > ring - off {
        return Ok(None);
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    src.read_exact_at(&mut payload, FILE_HEADER + off + RECORD_HEADER as u64)?;
    if !sealer.verify(pos, raw, &payload) {
        return Ok(None);
    }
    Ok(Some((h, Bytes::from(payload))))
}

/// Bytes read at a time by [`later`].
const SEARCH_CHUNK: usize = 1 << 20;

/// Every genuine record newer than `after` that starts in `[from, until)`,
/// in order: what lies beyond a break in the chain. Looks at every aligned
/// position, a chunk of the ring at a time; a MAC is computed only where a
/// header could be. Wrap markers count (they are this lap's too) but are
/// not returned as records.
fn later<R: ReadAt + ?Sized>(
    src: &R,
    sealer: &Sealer,
    ring: u64,
    from: u64,
    until: u64,
    after: u64,
) -> io::Result<Later> {
    let mut out = Later::default();
    let mut buf = vec![0u8; SEARCH_CHUNK];
    let mut pos = aligned(from);
    while pos < until {
        let off = pos % ring;
        let n = (ring - off).min(until - pos).min(SEARCH_CHUNK as u64);
        let chunk = buf
            .get_mut(..usize::try_from(n).unwrap_or(0))
            .unwrap_or_default();
        src.read_exact_at(chunk, FILE_HEADER + off)?;
        let mut at = 0u64;
        let mut next = pos + n;
        while at < n {
            let q = pos + at;
            let raw = usize::try_from(at)
                .ok()
                .and_then(|a| chunk.get(a..a.checked_add(RECORD_HEADER)?))
                .and_then(|r| <&[u8; RECORD_HEADER]>::try_from(r).ok());
            let Some(raw) = raw else {
                // A header cut by the chunk's end: read it where it lies.
                next = q;
                break;
            };
            if let Some(h) = Sealer::parse(raw)
                .filter(|h| h.seq > after)
                .map(|h| verify_at(src, sealer, ring, q, raw, h))
                .transpose()?
                .flatten()
            {
                let (h, payload) = h;
                out.first.get_or_insert(h.seq);
                out.last = h.seq;
                match h.kind {
                    Kind::Wrap => {
                        next = q + (ring - q % ring);
                    }
                    Kind::Batch => {
                        next = q + aligned(RECORD_HEADER as u64 + u64::from(h.len));
                        out.records.push(Record {
                            seq: h.seq,
                            end: next,
                            payload,
                        });
                    }
                }
                break;
            }
            at += ALIGN;
        }
        if next <= pos {
            // Less than a header left before `until`: nothing can start
            // there that would fit, but step on rather than spin.
            next = pos + ALIGN;
        }
        pos = next;
        if !pos.is_multiple_of(ring) && ring - pos % ring < RECORD_HEADER as u64 {
            pos += ring - pos % ring;
        }
    }
    Ok(out)
}

/// What [`Journal::later`] found beyond a break in the chain.
#[derive(Debug, Default)]
pub(crate) struct Later {
    /// The batch records, in order.
    pub records: Vec<Record>,
    /// The lowest and highest sequence numbers seen (wrap markers
    /// included); `first` is `None` when nothing was found.
    pub first: Option<u64>,
    pub last: u64,
}

impl Later {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<R: ReadAt + ?Sized> Iterator for Scan<'_, R> {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// Reads a journal image's header and returns the scan of its records
/// from `from`, newer than `after`. For fuzzing and tests; the store uses
/// [`Journal::scan`].
pub fn scan_image(
    image: &[u8],
    from: u64,
    after: u64,
) -> Result<impl Iterator<Item = (u64, Bytes)> + '_, HeaderError> {
    let h = FileHeader::decode(image)?;
    let scan = Scan {
        src: image,
        sealer: Sealer::new(&h.key),
        ring: h.ring,
        pos: from,
        last: after,
        budget: h.ring,
    };
    Ok(scan.map_while(Result::ok).map(|r| (r.seq, r.payload)))
}

/// A journal image in memory with the given ring size and key, holding
/// `records` (sequence number, payload) from position 0 on, laid out and
/// sealed exactly as the writer lays them out: for fuzzing the recovery
/// scan, and for tests.
pub fn image(ring: u64, key: [u8; KEY_LEN], records: &[(u64, &[u8])]) -> Option<Vec<u8>> {
    if !record::ring_ok(ring) {
        return None;
    }
    let header = FileHeader {
        version: VERSION,
        ring,
        id: [0; ID_LEN],
        key,
    };
    let sealer = Sealer::new(&key);
    let mut out = vec![0u8; usize::try_from(FILE_HEADER + ring).ok()?];
    for (dst, src) in out.iter_mut().zip(header.encode()) {
        *dst = src;
    }
    let mut head = 0u64;
    for (seq, payload) in records {
        let mut buf = vec![0u8; RECORD_HEADER];
        buf.extend_from_slice(payload);
        let (size, slack) = need(ring, head, buf.len());
        if size > ring {
            return None;
        }
        for (at, bytes) in frame(&sealer, ring, &mut head, *seq, size, slack, &mut buf) {
            let at = usize::try_from(FILE_HEADER + at).ok()?;
            out.get_mut(at..at + bytes.len())?.copy_from_slice(&bytes);
        }
    }
    Some(out)
}

/// The largest payload a record may have in a ring of `ring` bytes: a few
/// must fit in the ring at once, and a record must fit in one lap.
fn max_payload(ring: u64) -> usize {
    usize::try_from(ring / 8).unwrap_or(usize::MAX) - RECORD_HEADER
}

/// Ring bytes a record of `len` bytes (header included) needs at `head`:
/// its aligned size, and the slack skipped first if it does not fit before
/// the end of the ring.
fn need(ring: u64, head: u64, len: usize) -> (u64, u64) {
    let size = aligned(len as u64);
    let room = ring - head % ring;
    let slack = if room < size { room } else { 0 };
    (size, slack)
}

/// Seals the record in `buf` (header space, then payload) for position
/// `head` (after any slack), advances `head` past it, and returns what to
/// write at which ring offsets: a wrap marker if there is room for one,
/// then the record.
fn frame<'b>(
    sealer: &Sealer,
    ring: u64,
    head: &mut u64,
    seq: u64,
    size: u64,
    slack: u64,
    buf: &'b mut [u8],
) -> Vec<(u64, Cow<'b, [u8]>)> {
    let mut out = Vec::with_capacity(2);
    if slack > 0 {
        if slack >= RECORD_HEADER as u64 {
            let wrap = RecordHeader {
                seq,
                len: 0,
                kind: Kind::Wrap,
            };
            let raw = sealer.seal(*head, &wrap, &[]);
            out.push((*head % ring, Cow::Owned(raw.to_vec())));
        }
        *head += slack;
    }
    let payload = buf.get(RECORD_HEADER..).unwrap_or_default();
    let h = RecordHeader {
        seq,
        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        kind: Kind::Batch,
    };
    let raw = sealer.seal(*head, &h, payload);
    if let Some(dst) = buf.get_mut(..RECORD_HEADER) {
        dst.copy_from_slice(&raw);
    }
    out.push((*head % ring, Cow::Borrowed(&*buf)));
    *head += size;
    out
}

/// The journal file, open for appending.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// The format of the file: [`record::VERSION`] for every journal this
    /// build creates; an older one is only ever inspected.
    version: u32,
    ring: u64,
    id: [u8; ID_LEN],
    sealer: Sealer,
    /// Where the next record goes.
    head: u64,
    /// The record being built: header space, then the payload.
    buf: Vec<u8>,
    /// Tests: failures to inject into writes and syncs.
    faults: crate::disk::Faults,
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Where the record after it will start (the new head).
    pub end: u64,
}

impl Journal {
    /// Creates the file with a fresh id and key, its ring zero-filled, under
    /// a temporary name that is renamed into place once synced: a crash
    /// never leaves a half-made journal where the store expects one.
    pub(crate) fn create(path: &Path, ring: u64) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        if !record::ring_ok(ring) {
            return Err(JournalError::Header {
                path: path.to_owned(),
                source: HeaderError::RingSize(ring),
            });
        }
        let mut id = [0u8; ID_LEN];
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| io(io::Error::other("no randomness")))?;
        aws_lc_rs::rand::fill(&mut key).map_err(|_| io(io::Error::other("no randomness")))?;
        let header = FileHeader {
            version: VERSION,
            ring,
            id,
            key,
        };
        let tmp = path.with_extension("journal.tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let mut block = vec![0u8; 1 << 20];
        for (dst, src) in block.iter_mut().zip(header.encode()) {
            *dst = src;
        }
        let total = FILE_HEADER + ring;
        let mut at = 0u64;
        while at < total {
            let n = (total - at).min(block.len() as u64);
            let chunk = block
                .get(..usize::try_from(n).unwrap_or(0))
                .unwrap_or_default();
            file.write_all_at(chunk, at).map_err(io)?;
            if at == 0 {
                block.fill(0);
            }
            at += n;
        }
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_dir(path).map_err(io)?;
        Ok(Journal {
            file,
            path: path.to_owned(),
            version: VERSION,
            ring,
            id,
            sealer: Sealer::new(&key),
            head: 0,
            buf: Vec::new(),
            faults: crate::disk::Faults::default(),
        })
    }

    /// Opens an existing journal; `None` if there is no file.
    pub(crate) fn open(path: &Path) -> Result<Option<Journal>, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut raw = [0u8; 128];
        ReadAt::read_exact_at(&file, &mut raw, 0).map_err(io)?;
        let h = FileHeader::decode(&raw).map_err(|source| JournalError::Header {
            path: path.to_owned(),
            source,
        })?;
        let len = file.metadata().map_err(io)?.len();
        let want = FILE_HEADER + h.ring;
        if len != want {
            return Err(JournalError::Length {
                path: path.to_owned(),
                len,
                want,
            });
        }
        Ok(Some(Journal {
            file,
            path: path.to_owned(),
            version: h.version,
            ring: h.ring,
            id: h.id,
            sealer: Sealer::new(&h.key),
            head: 0,
            buf: Vec::new(),
            faults: crate::disk::Faults::default(),
        }))
    }

    pub(crate) fn id(&self) -> [u8; ID_LEN] {
        self.id
    }

    pub(crate) fn ring(&self) -> u64 {
        self.ring
    }

    /// The file's format version.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// Every genuine record newer than `after` that starts in
    /// `[from, until)`: see the module doc.
    pub(crate) fn later(&self, from: u64, until: u64, after: u64) -> io::Result<Later> {
        later(&self.file, &self.sealer, self.ring, from, until, after)
    }

    /// The records from `from` on that are newer than `after`.
    pub(crate) fn scan(&self, from: u64, after: u64) -> Scan<'_, File> {
        Scan {
            src: &self.file,
            sealer: self.sealer.clone(),
            ring: self.ring,
            pos: from,
            last: after,
            budget: self.ring,
        }
    }

    /// Tests: from now on, writes and syncs may fail as `faults` says.
    pub(crate) fn set_faults(&mut self, faults: crate::disk::Faults) {
        self.faults = faults;
    }

    /// Where the next record goes; set once, after recovery.
    pub(crate) fn set_head(&mut self, head: u64) {
        self.head = aligned(head);
    }

    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Starts a new record and returns its payload buffer.
    pub(crate) fn begin(&mut self) -> &mut Vec<u8> {
        self.buf.clear();
        self.buf.resize(RECORD_HEADER, 0);
        &mut self.buf
    }

    /// Whether the record being built fits between the head and `tail`
    /// (the oldest position still needed).
    pub(crate) fn fits(&self, tail: u64) -> bool {
        let (size, slack) = need(self.ring, self.head, self.buf.len());
        self.head + slack + size - tail.min(self.head) <= self.ring
    }

    /// The largest payload a record may have: a few must fit in the ring at
    /// once, and a record must fit in one lap.
    pub(crate) fn max_payload(&self) -> usize {
        max_payload(self.ring)
    }

    /// Writes the record being built as number `seq` (not yet synced). The
    /// caller has checked [`Journal::fits`].
    pub(crate) fn append(&mut self, seq: u64) -> Result<Appended, JournalError> {
        let (size, slack) = need(self.ring, self.head, self.buf.len());
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.faults
            .check(crate::disk::FaultAt::JournalWrite)
            .map_err(io)?;
        let writes = frame(
            &self.sealer,
            self.ring,
            &mut self.head,
            seq,
            size,
            slack,
            &mut self.buf,
        );
        for (at, bytes) in writes {
            self.file
                .write_all_at(&bytes, FILE_HEADER + at)
                .map_err(|source| JournalError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(Appended { end: self.head })
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&self) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.faults
            .check(crate::disk::FaultAt::JournalSync)
            .map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

/// Syncs the directory holding `path`, so a rename into it is durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
