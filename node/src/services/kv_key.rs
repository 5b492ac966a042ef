//! The KV map's key type: short keys stored in place.
//!
//! The map is a B-tree whose inserts and lookups binary-search each node's
//! keys. With `Bytes` keys every comparison followed a pointer to the key's
//! bytes somewhere on the heap (inside the log entry that wrote it): about
//! 17 cache misses per insert at 100,000 keys, the largest single cost of
//! applying a put (`perf`: `memcmp` was 5% of the leader's CPU at 64
//! clients). A key of up to [`INLINE`] bytes now sits in the node itself, so
//! a node's keys are compared without leaving it; longer keys keep a heap
//! copy. The type is 32 bytes, as `Bytes` was.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;

/// Longest key stored in place.
pub const INLINE: usize = 30;

/// A key of the KV map. Orders, compares and hashes as its bytes do, and
/// borrows as `[u8]`, so the map is searched with plain byte slices.
#[derive(Clone)]
pub enum Key {
    /// `len` bytes at the start of `buf`.
    Inline {
        len: u8,
        buf: [u8; INLINE],
    },
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            Key::Heap(bytes.into())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, buf } => &buf[..*len as usize],
            Key::Heap(b) => b,
        }
    }

    /// The key as `Bytes` (a copy), for replies.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_slice())
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Self {
        Key::new(b)
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_slice()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_as_small_as_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn keeps_every_length_and_orders_as_the_bytes_do() {
        // Lengths on both sides of the inline limit, with shared prefixes,
        // a zero byte (the inline buffer's padding) and 0xff.
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![0xff]];
        for len in [1, 15, 16, 29, 30, 31, 32, 100, 4096] {
            keys.push(vec![b'k'; len]);
            let mut z = vec![b'k'; len];
            z.push(0);
            keys.push(z);
            let mut last = vec![b'k'; len];
            last[len - 1] = 0xff;
            keys.push(last);
        }
        for a in &keys {
            let ka = Key::new(a);
            assert_eq!(ka.as_slice(), &a[..]);
            assert_eq!(&ka.to_bytes()[..], &a[..]);
            assert_eq!(matches!(ka, Key::Inline { .. }), a.len() <= INLINE);
            for b in &keys {
                let kb = Key::new(b);
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
    }

    #[test]
    fn a_map_of_keys_is_searched_with_byte_slices() {
        let mut map = imbl::OrdMap::new();
        for i in 0..2000u32 {
            // Half the keys inline, half on the heap.
            let key = if i % 2 == 0 {
                format!("k{i:05}")
            } else {
                format!("k{i:05}-{}", "x".repeat(40))
            };
            map.insert(Key::new(key.as_bytes()), i);
        }
        assert_eq!(map.get(&b"k00042"[..]), Some(&42));
        let long = format!("k00043-{}", "x".repeat(40));
        assert_eq!(map.get(long.as_bytes()), Some(&43));
        assert_eq!(map.get(&b"k00043"[..]), None);
        let in_order: Vec<Vec<u8>> = map.keys().map(|k| k.as_slice().to_vec()).collect();
        let mut sorted = in_order.clone();
        sorted.sort();
        assert_eq!(in_order, sorted);
    }
}
