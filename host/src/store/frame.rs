//! Checksummed record framing shared by every store file.
//!
//! A record is `[len: u32 LE][crc: u32 LE][payload: len bytes]`, where `crc` is the CRC-32
//! (IEEE, as computed by `crc32fast`) of the payload. A payload is never empty (it starts with
//! a kind byte), so a zero-filled region never reads as a valid record.

/// Bytes before a record's payload.
pub(crate) const HEADER_LEN: usize = 8;

/// Appends one record whose payload is the concatenation of `parts`; returns its total size.
pub(crate) fn push_record(out: &mut Vec<u8>, parts: &[&[u8]]) -> usize {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    out.reserve(HEADER_LEN + len);
    // Callers bound `len` below u32::MAX (see `messages::MAX_RECORD`).
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    HEADER_LEN + len
}

/// What [`read_record`] found at an offset.
#[derive(Debug, PartialEq)]
pub(crate) enum Next<'a> {
    /// A valid record: its payload and the offset just past it.
    Record(&'a [u8], usize),
    /// The buffer ends exactly here.
    End,
    /// The bytes here are not a valid record: a torn or damaged tail.
    Bad(&'static str),
}

/// Reads the record starting at `at` in `buf`, checking length and checksum.
pub(crate) fn read_record(buf: &[u8], at: usize) -> Next<'_> {
    let rest = match buf.get(at..) {
        Some([]) | None => return Next::End,
        Some(rest) => rest,
    };
    let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return Next::Bad("record header cut short");
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Next::Bad("zero record length");
    }
    let Some(payload) = body.get(..len) else {
        return Next::Bad("record extends past the end of the file");
    };
    if crc32fast::hash(payload) != crc {
        return Next::Bad("checksum mismatch");
    }
    Next::Record(payload, at + HEADER_LEN + len)
}

/// The payload length announced by a record header, if `header` holds one.
pub(crate) fn announced_len(header: &[u8]) -> Option<usize> {
    let bytes = header.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        let n = push_record(&mut buf, &[b"ab", b"cde"]);
        assert_eq!(n, 13);
        push_record(&mut buf, &[b"x"]);
        assert_eq!(read_record(&buf, 0), Next::Record(b"abcde", 13));
        assert_eq!(read_record(&buf, 13), Next::Record(b"x", 22));
        assert_eq!(read_record(&buf, 22), Next::End);
        assert_eq!(
            read_record(&buf[..21], 13),
            Next::Bad("record extends past the end of the file")
        );
        assert_eq!(
            read_record(&buf[..17], 13),
            Next::Bad("record header cut short")
        );
        let mut flipped = buf.clone();
        flipped[10] ^= 1;
        assert_eq!(read_record(&flipped, 0), Next::Bad("checksum mismatch"));
        assert_eq!(read_record(&[0u8; 16], 0), Next::Bad("zero record length"));
    }
}
