//! Framing of one log record in a `local://` segment file.
//!
//! ```text
//!  0      4     5        8        16       24       28
//!  | len  | typ | 0 0 0  |  term  | index  | crc32c | payload (len bytes)
//! ```
//! `len` is the payload length, `typ` the record type, and `crc32c` covers
//! the first 24 header bytes and the payload, so a damaged header is caught
//! as surely as damaged data.
//!
//! Types 0-2 are raft entries (normal, conf change, conf change v2); the
//! payload is the encoded raft `Entry`.
//!
//! Type 3 is a *sync marker*, not an entry: term and index are 0 and the
//! 16-byte payload is the segment's nonce (u64 LE, drawn when the segment is
//! created) and a byte offset S (u64 LE) in the same segment, meaning "the
//! bytes before S were fsynced before this marker was written". A marker
//! claims no more than its own offset. The local log writes one as the first
//! record of every in-progress segment and at the start of a batch when the
//! synced frontier moved since the last one; recovery uses them to tell a
//! torn unsynced tail from damage inside synced data (see
//! [`super::local_log`]). The nonce keeps marker-shaped bytes inside an entry
//! payload, or markers of another segment, from being taken for this
//! segment's markers.

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 28;
/// Largest payload accepted when reading; anything larger is damage.
pub const MAX_PAYLOAD: u32 = 256 << 20;
/// Record type of a sync marker (see the module docs).
pub const MARKER_TYPE: u8 = 3;
/// Payload bytes of a sync marker: nonce and synced offset.
const MARKER_PAYLOAD: u32 = 16;
/// Total bytes of a sync marker record.
pub const MARKER_LEN: usize = HEADER_LEN + MARKER_PAYLOAD as usize;
/// The first 8 bytes of every sync marker (payload length and type), for
/// searching a damaged segment for markers.
pub const MARKER_PREFIX: [u8; 8] = [MARKER_PAYLOAD as u8, 0, 0, 0, MARKER_TYPE, 0, 0, 0];

/// Appends the framed record for `entry` to `out`.
pub fn encode_record(entry: &Entry, out: &mut Vec<u8>) {
    let payload_len = entry.compute_size();
    let start = out.len();
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.push(entry_type_code(entry.get_entry_type()));
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    // Writing a message into a Vec cannot fail: the only errors rust-protobuf
    // reports are I/O errors of the sink and unset required fields (proto3 has none).
    let _ = entry.write_to_vec(out);
    let mut crc = crc32c::crc32c(&out[start..start + 24]);
    crc = crc32c::crc32c_append(crc, &out[start + HEADER_LEN..]);
    out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a sync marker of the segment with `nonce` saying the bytes
/// before `synced` were fsynced.
pub fn encode_marker(nonce: u64, synced: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MARKER_PAYLOAD.to_le_bytes());
    out.push(MARKER_TYPE);
    out.extend_from_slice(&[0; 3 + 8 + 8 + 4]);
    out.extend_from_slice(&nonce.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    let mut crc = crc32c::crc32c(&out[start..start + 24]);
    crc = crc32c::crc32c_append(crc, &out[start + HEADER_LEN..]);
    out[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
}

/// The type byte of an entry record.
fn entry_type_code(t: EntryType) -> u8 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// What [`decode_record`] found at an offset.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, valid entry record and its total length.
    Record(Entry, usize),
    /// A whole, valid sync marker ([`MARKER_LEN`] bytes).
    Marker {
        /// Nonce of the segment that wrote it.
        nonce: u64,
        /// The bytes before this offset were fsynced.
        synced: u64,
    },
    /// The buffer ends inside the record (a torn write, or the end).
    Truncated,
    /// The bytes are not a valid record.
    Bad(String),
}

/// The fixed header fields, read without trusting them.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub len: u32,
    pub typ: u8,
    pub term: u64,
    pub index: u64,
    pub crc: u32,
}

/// Reads the header at the start of `buf`, if there are enough bytes.
pub fn read_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[o..o + 8]);
        u64::from_le_bytes(b)
    };
    Some(Header {
        len: u32_at(0),
        typ: buf[4],
        term: u64_at(8),
        index: u64_at(16),
        crc: u32_at(24),
    })
}

/// Decodes the record at the start of `buf`.
pub fn decode_record(buf: &[u8]) -> Decoded {
    let Some(h) = read_header(buf) else {
        return Decoded::Truncated;
    };
    if h.len > MAX_PAYLOAD {
        return Decoded::Bad(format!("record length {} is impossible", h.len));
    }
    if h.typ > MARKER_TYPE || buf[5..8] != [0, 0, 0] {
        return Decoded::Bad(format!("bad record type byte {}", h.typ));
    }
    if h.typ == MARKER_TYPE && (h.len != MARKER_PAYLOAD || h.term != 0 || h.index != 0) {
        return Decoded::Bad("malformed sync marker header".to_string());
    }
    let total = HEADER_LEN + h.len as usize;
    if buf.len() < total {
        return Decoded::Truncated;
    }
    let mut crc = crc32c::crc32c(&buf[..24]);
    crc = crc32c::crc32c_append(crc, &buf[HEADER_LEN..total]);
    if crc != h.crc {
        return Decoded::Bad(format!(
            "checksum mismatch (stored {:08x}, computed {crc:08x})",
            h.crc
        ));
    }
    if h.typ == MARKER_TYPE {
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            u64::from_le_bytes(b)
        };
        return Decoded::Marker {
            nonce: u64_at(HEADER_LEN),
            synced: u64_at(HEADER_LEN + 8),
        };
    }
    let entry = match Entry::parse_from_bytes(&buf[HEADER_LEN..total]) {
        Ok(e) => e,
        Err(e) => return Decoded::Bad(format!("undecodable entry: {e}")),
    };
    if entry.index != h.index
        || entry.term != h.term
        || entry_type_code(entry.get_entry_type()) != h.typ
    {
        return Decoded::Bad("header disagrees with the entry it frames".to_string());
    }
    Decoded::Record(entry, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_record(&entry(7, 3, b"hello"), &mut buf);
        encode_record(&entry(8, 3, b""), &mut buf);
        let Decoded::Record(e, n) = decode_record(&buf) else {
            panic!("first record should decode");
        };
        assert_eq!((e.index, e.term, &e.data[..]), (7, 3, &b"hello"[..]));
        let Decoded::Record(e2, n2) = decode_record(&buf[n..]) else {
            panic!("second record should decode");
        };
        assert_eq!(e2.index, 8);
        assert_eq!(n + n2, buf.len());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&entry(1, 1, b"some payload bytes"), &mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode_record(&damaged), Decoded::Record(..)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn marker_round_trips_between_entries() {
        let mut buf = Vec::new();
        encode_marker(0xfeed_beef_0123_4567, 0, &mut buf);
        encode_record(&entry(1, 1, b"x"), &mut buf);
        encode_marker(0xfeed_beef_0123_4567, 4242, &mut buf);
        assert!(matches!(
            decode_record(&buf),
            Decoded::Marker {
                nonce: 0xfeed_beef_0123_4567,
                synced: 0
            }
        ));
        let Decoded::Record(e, n) = decode_record(&buf[MARKER_LEN..]) else {
            panic!("the entry should decode");
        };
        assert_eq!(e.index, 1);
        assert!(matches!(
            decode_record(&buf[MARKER_LEN + n..]),
            Decoded::Marker { synced: 4242, .. }
        ));
        assert_eq!(buf.len(), 2 * MARKER_LEN + n);
        assert_eq!(buf[..8], MARKER_PREFIX);
    }

    #[test]
    fn every_single_bit_flip_of_a_marker_is_detected() {
        let mut buf = Vec::new();
        encode_marker(7, 99, &mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    matches!(
                        decode_record(&damaged),
                        Decoded::Bad(_) | Decoded::Truncated
                    ),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn short_buffer_is_truncated_not_bad() {
        let mut buf = Vec::new();
        encode_record(&entry(1, 1, b"payload"), &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(decode_record(&buf[..cut]), Decoded::Truncated));
        }
        let mut marker = Vec::new();
        encode_marker(1, 2, &mut marker);
        for cut in 0..marker.len() {
            assert!(matches!(decode_record(&marker[..cut]), Decoded::Truncated));
        }
    }
}
