//! What an engine has to send, as a gather list ([`GatherOutput`]): PDU headers, digests,
//! padding and small answers staged in one buffer, and data referred to where it already
//! lies, in a command slot's buffer. A transport sends the pieces from there (`writev`, or
//! straight into the user-space stack's send ring) without the data being copied into the
//! engine's output first. NVMe/TCP (C2HData) and iSCSI (Data-In) share it.
//!
//! Invariant: a slot whose buffer the output refers to is not reused, and its buffer not
//! written, until the transport consumed the last byte of the last piece that refers to
//! it; [`GatherOutput::consume`] names that slot back to its engine. Slots are named by
//! index, so dropping the output can never leave a dangling reference.

use std::collections::VecDeque;

/// A piece of the output, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// The next `len` bytes of the staging buffer.
    Staged { len: usize },
    /// `len` bytes of slot `slot`'s buffer from `start`; `last`: no later piece refers to
    /// that slot, so it is released once this one is sent.
    Slot {
        slot: usize,
        start: usize,
        len: usize,
        last: bool,
    },
}

#[derive(Debug, Default)]
pub struct GatherOutput {
    /// Staged bytes; the first `head` were sent already.
    staged: Vec<u8>,
    head: usize,
    chunks: VecDeque<Chunk>,
    /// Bytes waiting, in all pieces.
    pending: usize,
}

impl GatherOutput {
    /// Bytes waiting to be sent (all of [`Self::chunks`]).
    pub fn len(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// What waits to be sent, in order; `buffer(slot)` is that slot's buffer.
    pub fn chunks<'a>(
        &'a self,
        buffer: impl Fn(usize) -> &'a [u8] + 'a,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut at = self.head;
        self.chunks.iter().map(move |c| match *c {
            Chunk::Staged { len } => {
                let b = &self.staged[at..at + len];
                at += len;
                b
            }
            Chunk::Slot {
                slot, start, len, ..
            } => &buffer(slot)[start..start + len],
        })
    }

    /// Appends bytes.
    pub fn stage(&mut self, bytes: &[u8]) {
        self.stage_with(|v| v.extend_from_slice(bytes));
    }

    /// Appends what `build` appends to the staging buffer (a PDU built in place).
    pub fn stage_with(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        let before = self.staged.len();
        build(&mut self.staged);
        let n = self.staged.len() - before;
        if n == 0 {
            return;
        }
        self.pending += n;
        match self.chunks.back_mut() {
            Some(Chunk::Staged { len }) => *len += n,
            _ => self.chunks.push_back(Chunk::Staged { len: n }),
        }
    }

    /// Appends `len` bytes of slot `slot`'s buffer from `start`, sent from there. `last`:
    /// no later piece refers to the slot; once that piece is consumed, [`Self::consume`]
    /// releases the slot. A slot's last piece must not be empty.
    pub fn lend(&mut self, slot: usize, start: usize, len: usize, last: bool) {
        assert!(len > 0, "an empty piece would never release its slot");
        self.pending += len;
        self.chunks.push_back(Chunk::Slot {
            slot,
            start,
            len,
            last,
        });
    }

    /// `n` bytes of the output were sent; `released(slot)` for each slot whose last piece
    /// went out in full.
    pub fn consume(&mut self, n: usize, mut released: impl FnMut(usize)) {
        let mut n = n.min(self.pending);
        self.pending -= n;
        while n > 0 {
            let Some(c) = self.chunks.front_mut() else {
                break;
            };
            match c {
                Chunk::Staged { len } => {
                    let k = n.min(*len);
                    *len -= k;
                    self.head += k;
                    n -= k;
                    if *len == 0 {
                        self.chunks.pop_front();
                    }
                }
                Chunk::Slot {
                    slot,
                    start,
                    len,
                    last,
                } => {
                    let k = n.min(*len);
                    *start += k;
                    *len -= k;
                    n -= k;
                    if *len == 0 {
                        let (i, last) = (*slot, *last);
                        self.chunks.pop_front();
                        if last {
                            released(i);
                        }
                    }
                }
            }
        }
        if self.chunks.is_empty() {
            self.staged.clear();
            self.head = 0;
        } else if self.head >= 64 * 1024 && self.head * 2 >= self.staged.len() {
            // Staged chunks know lengths, not offsets: dropping what was sent moves nothing
            // they refer to.
            self.staged.drain(..self.head);
            self.head = 0;
        }
    }

    /// Drops everything unsent (the connection is gone); `released(slot)` for each slot
    /// the output still referred to.
    pub fn clear(&mut self, released: impl FnMut(usize)) {
        self.consume(self.pending, released);
    }
}

/// All of `chunks`, copied into one buffer (for tests, fuzzing and callers that want one).
pub fn concat<'a>(chunks: impl Iterator<Item = &'a [u8]>, len: usize) -> Vec<u8> {
    let mut all = Vec::with_capacity(len);
    for c in chunks {
        all.extend_from_slice(c);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_come_out_in_order_and_slots_are_released_after_their_last_byte() {
        let bufs = [b"abcdef".to_vec(), b"xyz".to_vec()];
        let mut o = GatherOutput::default();
        o.stage(b"H1");
        o.lend(0, 1, 2, false);
        o.stage(b"-");
        o.lend(0, 3, 3, true);
        o.stage_with(|v| v.extend_from_slice(b"H2"));
        o.lend(1, 0, 3, true);
        let all = concat(o.chunks(|i| &bufs[i][..]), o.len());
        assert_eq!(all, b"H1bc-defH2xyz");
        assert_eq!(o.len(), all.len());
        let mut released = Vec::new();
        for (k, &byte) in all.iter().enumerate() {
            assert_eq!(o.chunks(|i| &bufs[i][..]).next().unwrap()[0], byte);
            o.consume(1, |s| released.push((s, k)));
        }
        // Slot 0's last byte is the 8th (index 7), slot 1's the 13th.
        assert_eq!(released, [(0, 7), (1, 12)]);
        assert!(o.is_empty());
        assert_eq!(o.chunks(|i| &bufs[i][..]).count(), 0);
    }

    #[test]
    fn clearing_releases_the_slots_still_referred_to() {
        let mut o = GatherOutput::default();
        o.lend(4, 0, 10, true);
        o.stage(b"x");
        o.lend(5, 0, 10, true);
        let mut released = Vec::new();
        o.consume(3, |s| released.push(s));
        o.clear(|s| released.push(s));
        assert_eq!(released, [4, 5]);
        assert!(o.is_empty());
    }
}
