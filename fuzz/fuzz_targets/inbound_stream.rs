//! `Inbound` fed the input in chunks whose sizes the first byte picks, read
//! the way the relay reads a session stream: the mode byte, the client's
//! handshake messages (two for an owner, one for a sender), then frames.
//!
//! Invariant: the events (and the first error) are exactly those of feeding
//! the whole input at once; chunking never changes what comes out. Every
//! frame also survives an encode/decode round trip.
#![no_main]

use bytes::Bytes;
use chappe_fuzz::SplitMix;
use chappe_proto::frame::{Frame, FrameError};
use chappe_proto::inbound::{Inbound, StartError};
use chappe_proto::noise::Mode;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Mode(Mode),
    Handshake(Bytes),
    Frame(Frame),
    StartErr(StartError),
    FrameErr(FrameError),
}

#[derive(Clone, Copy)]
enum Phase {
    Mode,
    Handshake(u8),
    Frames,
    Failed,
}

struct Reader {
    inb: Inbound,
    phase: Phase,
    events: Vec<Event>,
}

impl Reader {
    fn new() -> Self {
        Reader {
            inb: Inbound::new(),
            phase: Phase::Mode,
            events: Vec::new(),
        }
    }

    /// Takes out everything the buffered bytes allow.
    fn pump(&mut self) {
        loop {
            let (next, event) = match self.phase {
                Phase::Failed => return,
                Phase::Mode => match self.inb.take_mode() {
                    Ok(None) => return,
                    Ok(Some(m)) => {
                        let msgs = if m == Mode::Owner { 2 } else { 1 };
                        (Phase::Handshake(msgs), Event::Mode(m))
                    }
                    Err(e) => (Phase::Failed, Event::StartErr(e)),
                },
                Phase::Handshake(left) => match self.inb.take_handshake() {
                    Ok(None) => return,
                    Ok(Some(msg)) => {
                        let next = if left > 1 {
                            Phase::Handshake(left - 1)
                        } else {
                            Phase::Frames
                        };
                        (next, Event::Handshake(msg))
                    }
                    Err(e) => (Phase::Failed, Event::StartErr(e)),
                },
                Phase::Frames => match self.inb.take_frame() {
                    Ok(None) => return,
                    Ok(Some(f)) => {
                        chappe_fuzz::check_frame(&f, None);
                        (Phase::Frames, Event::Frame(f))
                    }
                    Err(e) => (Phase::Failed, Event::FrameErr(e)),
                },
            };
            self.phase = next;
            self.events.push(event);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };

    let mut whole = Reader::new();
    whole.inb.extend(stream);
    whole.pump();

    // Chunks of 1 ..= 2^(1 + seed % 8) bytes, sizes drawn from the seed.
    let max = 1usize << (1 + seed % 8);
    let mut rng = SplitMix(u64::from(seed));
    let mut chunked = Reader::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = 1 + (rng.next_u64() as usize) % max;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        chunked.inb.extend(chunk);
        chunked.pump();
        rest = tail;
    }

    assert_eq!(chunked.events, whole.events, "chunking changed the events");
    assert_eq!(
        chunked.inb.is_empty(),
        whole.inb.is_empty(),
        "different leftovers"
    );
});
