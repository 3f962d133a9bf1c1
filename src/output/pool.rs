//! Spare byte buffers of one output, reused from one batch or block to the next.
//!
//! An output fills a buffer of the same size again and again (a lines batch of
//! `max_bytes`, an S3 block of 256 KiB). Allocating each afresh costs more than the copy
//! into it: glibc maps a buffer of that size anew and unmaps it on free, so every page
//! of every buffer was faulted in again (one fault per 4 KiB written). What a pool holds
//! is outside the memory budget, so it keeps few buffers and none past a size.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// Spare buffers; cheap to clone (one shared list).
#[derive(Clone)]
pub(crate) struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Spare buffers kept at most.
    keep: usize,
    /// Buffers with more capacity than this are freed, not kept.
    max_capacity: usize,
}

impl BufferPool {
    /// A pool keeping up to `keep` buffers of at most `max_capacity` bytes each.
    pub(crate) fn new(keep: usize, max_capacity: usize) -> Self {
        BufferPool {
            spare: Arc::default(),
            keep,
            max_capacity,
        }
    }

    /// An empty buffer with room for `capacity` bytes: a spare one when it has the room.
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        let spare = self.spare.lock().pop();
        match spare {
            Some(buf) if buf.capacity() >= capacity => buf,
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buf` for a later [`take`](Self::take), if it is not too large and the pool
    /// not full; else frees it.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.max_capacity {
            return;
        }
        let mut spare = self.spare.lock();
        if spare.len() < self.keep {
            buf.clear();
            spare.push(buf);
        }
    }

    /// `buf` as `Bytes` that give it back to this pool when the last of them drops. The
    /// pool is held weakly: bytes outliving their output just free the buffer.
    pub(crate) fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(&self.spare),
            keep: self.keep,
            max_capacity: self.max_capacity,
        })
    }

    /// Spare buffers held now.
    #[cfg(test)]
    pub(crate) fn spare(&self) -> usize {
        self.spare.lock().len()
    }
}

/// A buffer lent out as `Bytes`; back to its pool on drop.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
    max_capacity: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(spare) = self.pool.upgrade() {
            BufferPool {
                spare,
                keep: self.keep,
                max_capacity: self.max_capacity,
            }
            .give(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut a = pool.take(1000);
        a.extend_from_slice(b"old");
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.spare(), 1);
        let b = pool.take(1000);
        assert_eq!(b.as_ptr(), ptr, "the same allocation");
        assert!(b.is_empty());
        // A spare too small for what is asked is not used.
        pool.give(b);
        assert!(pool.take(4000).capacity() >= 4000);
    }

    #[test]
    fn keeps_at_most_keep_buffers_none_too_large() {
        let pool = BufferPool::new(2, 4096);
        for _ in 0..3 {
            pool.give(Vec::with_capacity(100));
        }
        assert_eq!(pool.spare(), 2);
        let pool = BufferPool::new(2, 4096);
        pool.give(Vec::with_capacity(8192));
        pool.give(Vec::new());
        assert_eq!(pool.spare(), 0, "neither too large nor empty ones are kept");
    }

    #[test]
    fn bytes_come_back_when_the_last_clone_drops() {
        let pool = BufferPool::new(2, 1 << 20);
        let b = pool.bytes(b"line\n".to_vec());
        let c = b.clone();
        drop(b);
        assert_eq!(pool.spare(), 0, "a clone still holds the bytes");
        assert_eq!(&c[..], b"line\n");
        drop(c);
        assert_eq!(pool.spare(), 1);
        // Bytes that outlive their pool just free the buffer.
        let gone = BufferPool::new(2, 1 << 20);
        let d = gone.bytes(b"x".to_vec());
        drop(gone);
        assert_eq!(&d[..], b"x");
    }
}
