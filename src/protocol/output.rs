//! The bytes owed to one connection, in order, ready to leave in one
//! vectored write.
//!
//! Reply lines are appended to an open text buffer. Small job bodies are
//! copied into it too (a copy of a few hundred bytes is cheaper than an
//! extra iovec); large ones are queued by reference, so a 64 KiB body is
//! never copied on its way out. The network layer takes all segments at
//! once, writes them, and hands the emptied text buffers back: a small one
//! is kept for the next replies, a large one freed, so that a connection
//! that had a burst of replies does not keep the memory it took. A busy
//! connection then allocates once per write, with room for as much text as
//! its last write carried, never growing a buffer step by step.

use std::collections::VecDeque;

use crate::engine::Body;
use crate::memory::{self, OutOfMemory};

/// Bodies up to this size are copied into the text buffer.
pub const BODY_INLINE_BYTES_MAX: usize = 1024;

/// Spare text buffers kept for reuse. One is enough for the common rhythm:
/// replies fill the open buffer while the previous one is being written.
const SPARE_BUFFERS_MAX: usize = 1;

/// Text buffers larger than this are freed rather than kept once written,
/// and the open one is shrunk to it once a connection owes nothing: a
/// burst of replies must not leave every connection holding the memory it
/// took (after 100 `stats` each, 2,000 idle connections kept 220 MB; C
/// beanstalkd 5 MB). A request-and-reply client's buffer fits.
pub const KEPT_BUFFER_BYTES_MAX: usize = 1024;

/// The room [`Output::try_reserve`] makes in a spare buffer for the text
/// after a body sent by reference: its CRLF and a few reply lines.
const SPARE_BYTES_MIN: usize = 256;

#[derive(Debug)]
pub enum Segment {
    Text(Vec<u8>),
    Body(Body),
}

impl Segment {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Segment::Text(t) => t,
            Segment::Body(b) => b.bytes(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Output {
    sealed: VecDeque<Segment>,
    sealed_bytes: usize,
    /// The part of `sealed_bytes` in text buffers (not bodies by reference).
    sealed_text_bytes: usize,
    open: Vec<u8>,
    spare: Vec<Vec<u8>>,
    /// The text of the last buffer sealed: the room a fresh open buffer
    /// gets when it is first written.
    hint: usize,
    /// Segments taken so far: the number of the segment at the front of
    /// `sealed`, counting from the first ever sealed.
    taken: u64,
    /// Replies that must wait for the write-ahead log: everything from
    /// segment `at` on waits until batch `batch` is durable. In order of
    /// both fields.
    fences: VecDeque<Fence>,
    /// The last batch of the log known to be durable.
    durable: u64,
}

#[derive(Clone, Copy, Debug)]
struct Fence {
    at: u64,
    batch: u64,
}

/// A place in an [`Output`], taken before a command runs, so that its
/// reply can be held back afterwards ([`Output::fence`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    sealed: u64,
    open: usize,
}

impl Output {
    /// The open text buffer, for appending reply bytes.
    pub fn text(&mut self) -> &mut Vec<u8> {
        self.open()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.open().extend_from_slice(bytes);
    }

    /// Appends a body and the CRLF after it.
    pub fn body(&mut self, body: &Body) {
        let bytes = body.bytes();
        if bytes.len() <= BODY_INLINE_BYTES_MAX {
            self.open().extend_from_slice(bytes);
        } else {
            self.seal();
            self.sealed_bytes += bytes.len();
            self.sealed.push_back(Segment::Body(body.clone()));
        }
        self.open().extend_from_slice(b"\r\n");
    }

    /// The open buffer, with room for as much as the last one carried when
    /// it is about to be written for the first time.
    #[inline]
    fn open(&mut self) -> &mut Vec<u8> {
        if self.open.capacity() < self.hint && self.open.is_empty() {
            self.open.reserve(self.hint);
        }
        &mut self.open
    }

    /// Bytes waiting to be taken.
    pub fn len(&self) -> usize {
        self.sealed_bytes + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting in text buffers: what this queue costs in memory of
    /// its own (bodies sent by reference belong to their jobs).
    pub fn text_len(&self) -> usize {
        self.sealed_text_bytes + self.open.len()
    }

    /// Moves every pending segment that may leave now to the end of `into`:
    /// all of them, or those before the first fence whose batch is not
    /// durable yet.
    pub fn take(&mut self, into: &mut Vec<Segment>) {
        let Some(fence) = self.fences.front().copied() else {
            self.seal();
            self.taken += self.sealed.len() as u64;
            into.extend(self.sealed.drain(..));
            self.sealed_bytes = 0;
            self.sealed_text_bytes = 0;
            return;
        };
        // The fence sealed everything before it, so the open buffer is
        // after it and stays.
        let n = (fence.at - self.taken) as usize;
        for segment in self.sealed.drain(..n) {
            let len = segment.bytes().len();
            self.sealed_bytes -= len;
            if matches!(segment, Segment::Text(_)) {
                self.sealed_text_bytes -= len;
            }
            into.push(segment);
        }
        self.taken += n as u64;
    }

    /// How many segments [`Output::take`] would give now (at most).
    pub fn sendable_segments(&self) -> usize {
        match self.fences.front() {
            None => self.sealed.len() + usize::from(!self.open.is_empty()),
            Some(fence) => (fence.at - self.taken) as usize,
        }
    }

    /// Whether [`Output::take`] has anything to give now.
    pub fn has_sendable(&self) -> bool {
        match self.fences.front() {
            None => !self.is_empty(),
            Some(fence) => fence.at > self.taken,
        }
    }

    /// Where the next reply will start.
    pub fn mark(&self) -> Mark {
        Mark { sealed: self.taken + self.sealed.len() as u64, open: self.open.len() }
    }

    /// Holds back everything from `from` on (the reply of a command whose
    /// changes went into the log) until batch `batch` of the log is
    /// durable ([`Output::release`]). Replies after it wait behind it, so a
    /// connection's replies keep their order.
    pub fn fence(&mut self, from: Mark, batch: u64) {
        if batch <= self.durable || self.fences.back().is_some_and(|f| f.batch >= batch) {
            // Durable already, or an earlier fence holds all this back for
            // as long.
            return;
        }
        let total = self.taken + self.sealed.len() as u64;
        let at = if from.sealed == total {
            // The reply is at the end of the open buffer: seal what is
            // before it.
            if from.open > 0 {
                let tail = self.open.split_off(from.open);
                let head = std::mem::replace(&mut self.open, tail);
                self.sealed_bytes += head.len();
                self.sealed_text_bytes += head.len();
                self.sealed.push_back(Segment::Text(head));
            }
            total + u64::from(from.open > 0)
        } else {
            // Segments were sealed since the mark: the one at the mark was
            // the open buffer then, and holds what came before the reply.
            let i = (from.sealed - self.taken) as usize;
            match &mut self.sealed[i] {
                Segment::Text(t) if from.open > 0 && from.open < t.len() => {
                    let tail = t.split_off(from.open);
                    self.sealed.insert(i + 1, Segment::Text(tail));
                    from.sealed + 1
                }
                Segment::Text(t) if from.open > 0 && from.open == t.len() => from.sealed + 1,
                _ => from.sealed,
            }
        };
        self.fences.push_back(Fence { at, batch });
    }

    /// Batches up to `durable` are durable: the replies that waited for
    /// them may leave.
    pub fn release(&mut self, durable: u64) {
        self.durable = self.durable.max(durable);
        while self.fences.front().is_some_and(|f| f.batch <= self.durable) {
            self.fences.pop_front();
        }
    }

    /// Whether some replies wait for the log.
    pub fn is_fenced(&self) -> bool {
        !self.fences.is_empty()
    }

    /// Returns a written text buffer for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS_MAX && buf.capacity() <= KEPT_BUFFER_BYTES_MAX {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Makes room for `n` more bytes of reply text, and for a body sent by
    /// reference among them, so that writing them allocates nothing;
    /// refuses when the memory cannot be had.
    pub fn try_reserve(&mut self, n: usize) -> Result<(), OutOfMemory> {
        // No room for a whole batch is taken infallibly later.
        self.hint = 0;
        memory::try_reserve(&mut self.open, n)?;
        memory::attempt(|| self.sealed.try_reserve(2))?;
        // A body by reference seals the open buffer; what follows it goes
        // into a spare one.
        if self.spare.is_empty() {
            let mut spare = Vec::new();
            memory::try_reserve(&mut spare, SPARE_BYTES_MIN)?;
            self.spare.push(spare);
        }
        Ok(())
    }

    /// Frees what a burst of replies left behind, once nothing is owed:
    /// an open buffer grown past [`KEPT_BUFFER_BYTES_MAX`].
    pub fn shrink(&mut self) {
        debug_assert!(self.is_empty());
        if self.open.capacity() > KEPT_BUFFER_BYTES_MAX {
            self.open = Vec::new();
        }
    }

    /// Bytes of memory the text buffers take, for tests and measurements.
    pub fn capacity(&self) -> usize {
        let sealed: usize = self.sealed.iter().map(|s| if let Segment::Text(t) = s { t.capacity() } else { 0 }).sum();
        sealed + self.open.capacity() + self.spare.iter().map(Vec::capacity).sum::<usize>()
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        // A fence right at the end of the sealed segments stays where it
        // is: the open buffer's bytes come after it.
        let fresh = self.spare.pop().unwrap_or_default();
        let text = std::mem::replace(&mut self.open, fresh);
        self.hint = text.len();
        self.sealed_bytes += text.len();
        self.sealed_text_bytes += text.len();
        self.sealed.push_back(Segment::Text(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(out: &mut Output) -> Vec<u8> {
        let mut segs = Vec::new();
        out.take(&mut segs);
        segs.iter().flat_map(|s| s.bytes().to_vec()).collect()
    }

    #[test]
    fn keeps_order_and_references_large_bodies() {
        let mut out = Output::default();
        out.push(b"A\r\n");
        let small = Body::from_slice(b"small");
        out.body(&small);
        let big_bytes = vec![b'x'; BODY_INLINE_BYTES_MAX + 1];
        let big = Body::from_slice(&big_bytes);
        out.push(b"B\r\n");
        out.body(&big);
        out.push(b"C\r\n");
        assert_eq!(out.len(), 3 + 7 + 3 + big_bytes.len() + 2 + 3);
        assert_eq!(out.text_len(), 3 + 7 + 3 + 2 + 3);
        let mut segs = Vec::new();
        out.take(&mut segs);
        assert_eq!(segs.len(), 3);
        assert!(matches!(&segs[1], Segment::Body(b) if b == &big));
        let flat: Vec<u8> = segs.iter().flat_map(|s| s.bytes().to_vec()).collect();
        assert_eq!(flat, [b"A\r\nsmall\r\nB\r\n".to_vec(), big_bytes, b"\r\nC\r\n".to_vec()].concat());
        assert!(out.is_empty());
        assert_eq!(flatten(&mut out), b"");
    }

    #[test]
    fn fenced_replies_wait_for_their_batch_and_keep_their_order() {
        let mut out = Output::default();
        out.push(b"USING a\r\n");
        let mark = out.mark();
        out.push(b"INSERTED 1\r\n");
        out.fence(mark, 3);
        // A reply that waits for nothing still waits behind the fence.
        out.push(b"USING b\r\n");
        assert!(out.has_sendable());
        assert_eq!(flatten(&mut out), b"USING a\r\n");
        assert!(!out.has_sendable());
        assert!(!out.is_empty());
        let mark = out.mark();
        out.push(b"DELETED\r\n");
        out.fence(mark, 4);
        let big = Body::from_slice(&vec![b'z'; BODY_INLINE_BYTES_MAX + 1]);
        out.push(b"FOUND 1 1025\r\n");
        out.body(&big);
        out.release(3);
        let first: Vec<u8> = [b"INSERTED 1\r\nUSING b\r\n".to_vec()].concat();
        assert_eq!(flatten(&mut out), first);
        assert!(!out.has_sendable());
        out.release(4);
        assert!(!out.is_fenced());
        let rest =
            [b"DELETED\r\nFOUND 1 1025\r\n".to_vec(), vec![b'z'; BODY_INLINE_BYTES_MAX + 1], b"\r\n".to_vec()].concat();
        assert_eq!(flatten(&mut out), rest);
        assert!(out.is_empty());
    }

    /// The network makes room for this many segments (and iovecs) before
    /// it takes them, fallibly: `take` must never give more.
    #[test]
    fn sendable_segments_counts_what_take_gives() {
        let takes = |out: &mut Output| {
            let count = out.sendable_segments();
            let mut segs = Vec::new();
            out.take(&mut segs);
            assert_eq!(segs.len(), count);
            count
        };
        let mut out = Output::default();
        assert_eq!(takes(&mut out), 0);
        out.push(b"A\r\n");
        assert_eq!(takes(&mut out), 1);
        let big = Body::from_slice(&vec![b'b'; BODY_INLINE_BYTES_MAX + 1]);
        out.push(b"FOUND 1 1025\r\n");
        out.body(&big);
        out.body(&big);
        assert_eq!(takes(&mut out), 5, "the line, each body and the CRLF after each");
        out.push(b"USING a\r\n");
        let mark = out.mark();
        out.push(b"INSERTED 1\r\n");
        out.fence(mark, 1);
        out.push(b"FOUND 1 1025\r\n");
        out.body(&big);
        assert_eq!(takes(&mut out), 1, "only what is before the fence");
        assert_eq!(takes(&mut out), 0);
        out.release(1);
        assert_eq!(takes(&mut out), 3);
        assert!(out.is_empty());
    }

    #[test]
    fn a_fence_after_a_body_sealed_in_the_same_reply_splits_at_the_reply() {
        let mut out = Output::default();
        out.push(b"A\r\n");
        let mark = out.mark();
        out.push(b"B\r\n");
        let big = Body::from_slice(&vec![b'q'; BODY_INLINE_BYTES_MAX + 1]);
        out.body(&big);
        out.fence(mark, 1);
        assert_eq!(flatten(&mut out), b"A\r\n");
        out.release(1);
        let rest = [b"B\r\n".to_vec(), vec![b'q'; BODY_INLINE_BYTES_MAX + 1], b"\r\n".to_vec()].concat();
        assert_eq!(flatten(&mut out), rest);
        // Durable already: no fence at all.
        let mark = out.mark();
        out.push(b"C\r\n");
        out.fence(mark, 1);
        assert!(!out.is_fenced());
        assert_eq!(flatten(&mut out), b"C\r\n");
    }
}
