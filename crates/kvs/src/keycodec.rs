//! An ordered key layout for multi-version cells in one bytewise-sorted key space, shared by the
//! backends that store everything in such a space (RocksDB; etcd behind its key prefix).
//!
//! All tables share one key space (bytewise order):
//!
//! ```text
//! catalog entry:  00 'T' <qualified table name>        -> table id (u32 BE) ‖ metadata bytes
//! next table id:  00 'N'                               -> u32 BE
//! cell version:   01 <table id: u32 BE> esc(row) esc(column) desc(ts)
//! ```
//!
//! `esc(x)` writes each byte of `x`, doubling a zero byte as `00 FF`, then the terminator
//! `00 01`. `desc(ts)` is `!(ts XOR 2^63)` as 8 big-endian bytes.
//!
//! Why this is unambiguous: inside `esc(x)` every `00` is followed by `FF`, so the first
//! `00 01` is the terminator: a key splits into row, column and timestamp in exactly one way.
//! Why it sorts row ascending, column ascending, timestamp descending: escaping preserves the
//! order of the first differing byte (`00 FF` < any byte ≥ 1), and a name that is a proper
//! prefix of another ends with `00 01`, which sorts before `00 FF` or any byte ≥ 1 — so a
//! shorter name sorts first, as in the unescaped order. `ts XOR 2^63` maps signed order to
//! unsigned order and the complement reverses it, so within a cell the newest version comes
//! first: a point read "latest version < T" is one seek to `key(cell, T-1)`.

use crate::{Cell, KvsError, KvsResult, Timestamp};

pub const CATALOG_TABLE_PREFIX: &[u8] = &[0x00, b'T'];
pub const NEXT_TABLE_ID_KEY: &[u8] = &[0x00, b'N'];
const DATA: u8 = 0x01;
const TERMINATOR: [u8; 2] = [0x00, 0x01];
const TABLE_PREFIX_LEN: usize = 5;
pub const TS_LEN: usize = 8;
/// The length of the shortest version key: table prefix, two empty names, timestamp.
const MIN_VERSION_KEY_LEN: usize = TABLE_PREFIX_LEN + 2 * TERMINATOR.len() + TS_LEN;

/// Whether `key` is in the version keys' part of the key space and long enough to be one (a
/// cheap test, for filters; [`layout`] checks a key's form).
pub fn is_version_key(key: &[u8]) -> bool {
    key.first() == Some(&DATA) && key.len() >= MIN_VERSION_KEY_LEN
}

pub fn catalog_key(qualified_name: &str) -> Vec<u8> {
    let mut key = CATALOG_TABLE_PREFIX.to_vec();
    key.extend_from_slice(qualified_name.as_bytes());
    key
}

/// The first key of a table's data.
pub fn table_start(table_id: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(TABLE_PREFIX_LEN);
    key.push(DATA);
    key.extend_from_slice(&table_id.to_be_bytes());
    key
}

/// The first key after a table's data.
pub fn table_end(table_id: u32) -> Vec<u8> {
    match table_id.checked_add(1) {
        Some(next) => table_start(next),
        None => vec![DATA + 1],
    }
}

fn escape_into(out: &mut Vec<u8>, name: &[u8]) {
    for &b in name {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&TERMINATOR);
}

/// The prefix shared by every version of the row's cells; also the row's smallest key.
pub fn row_prefix(table_id: u32, row: &[u8]) -> Vec<u8> {
    // Room for the row, and usually for a short column and a timestamp after it.
    let mut key = Vec::with_capacity(TABLE_PREFIX_LEN + row.len() + 2 + 16);
    key.push(DATA);
    key.extend_from_slice(&table_id.to_be_bytes());
    escape_into(&mut key, row);
    key
}

/// The first key after every key of `row`.
pub fn row_end(table_id: u32, row: &[u8]) -> Vec<u8> {
    past_terminator(row_prefix(table_id, row))
}

/// Turns a prefix ending in the terminator `00 01` into `.. 00 02`: the first key after every
/// key starting with that prefix (no escaped name continues with `00 02`).
pub fn past_terminator(mut prefix: Vec<u8>) -> Vec<u8> {
    if let Some(last) = prefix.last_mut() {
        *last = 0x02;
    }
    prefix
}

/// The prefix of every version of one cell; also the smallest key of that column in the row.
pub fn cell_prefix(table_id: u32, row: &[u8], column: &[u8]) -> Vec<u8> {
    let mut key = row_prefix(table_id, row);
    escape_into(&mut key, column);
    key
}

/// The first key after every version of a cell.
pub fn cell_end(table_id: u32, row: &[u8], column: &[u8]) -> Vec<u8> {
    past_terminator(cell_prefix(table_id, row, column))
}

pub fn encode_ts(ts: Timestamp) -> [u8; TS_LEN] {
    (!((ts as u64) ^ (1 << 63))).to_be_bytes()
}

fn decode_ts(bytes: [u8; TS_LEN]) -> Timestamp {
    ((!u64::from_be_bytes(bytes)) ^ (1 << 63)) as Timestamp
}

pub fn version_key(table_id: u32, cell: &Cell, ts: Timestamp) -> Vec<u8> {
    let mut key = cell_prefix(table_id, cell.row(), cell.column());
    key.extend_from_slice(&encode_ts(ts));
    key
}

/// The key of a version of the cell whose prefix is `prefix`.
pub fn with_ts(prefix: &[u8], ts: Timestamp) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + TS_LEN);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&encode_ts(ts));
    key
}

/// The timestamp of a version key known to start with a cell's prefix of `prefix_len` bytes.
pub fn ts_of(key: &[u8], prefix_len: usize) -> Option<Timestamp> {
    let ts: [u8; TS_LEN] = key.get(prefix_len..)?.try_into().ok()?;
    Some(decode_ts(ts))
}

/// A decoded version key: the cell's names, the length of its cell prefix, and its timestamp.
pub struct DecodedKey {
    pub row: Vec<u8>,
    pub column: Vec<u8>,
    pub ts: Timestamp,
    /// Length of the key without the timestamp (the cell prefix).
    pub cell_prefix_len: usize,
}

fn unescape(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(bytes.len());
    let len = unescape_into(bytes, &mut out)?;
    Some((out, len))
}

/// Appends the name escaped at the start of `bytes` to `out`; the escaped length (with its
/// terminator), or `None` if malformed.
fn unescape_into(bytes: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut i = 0;
    // Copies the runs between escapes whole: most names have no zero byte at all.
    loop {
        let zero = i + bytes.get(i..)?.iter().position(|b| *b == 0)?;
        out.extend_from_slice(&bytes[i..zero]);
        match bytes.get(zero + 1)? {
            0xFF => out.push(0),
            0x01 => return Some(zero + 2),
            _ => return None,
        }
        i = zero + 2;
    }
}

/// The name escaped in exactly `escaped` (terminator included), without allocating: borrowed
/// from `escaped` when the name has no zero byte (nothing to unescape), else unescaped into
/// `scratch`. `None` if `escaped` is not exactly one escaped name.
pub fn name_in<'a>(escaped: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let body = escaped.strip_suffix(&TERMINATOR)?;
    if !body.contains(&0) {
        return Some(body);
    }
    scratch.clear();
    let len = unescape_into(escaped, scratch)?;
    (len == escaped.len()).then_some(scratch.as_slice())
}

/// [`row_name`] without allocating, as [`name_in`] does.
pub fn row_name_in<'a>(row_prefix: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    name_in(row_prefix.get(TABLE_PREFIX_LEN..)?, scratch)
}

/// Where a version key's parts end, found without allocating: the row prefix is
/// `key[..row_end]`, the cell prefix `key[..cell_end]`, the timestamp the 8 bytes after it.
#[derive(Clone, Copy)]
pub struct Layout {
    pub row_end: usize,
    pub cell_end: usize,
}

/// The end of the escaped name starting at `from` (just past its terminator).
fn name_end(key: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let zero = i + key.get(i..)?.iter().position(|b| *b == 0)?;
        match key.get(zero + 1)? {
            0x01 => return Some(zero + 2),
            0xFF => i = zero + 2,
            _ => return None,
        }
    }
}

fn malformed(key: &[u8]) -> KvsError {
    KvsError::Corruption {
        detail: format!("malformed version key {}", key.escape_ascii()),
    }
}

pub fn layout(key: &[u8]) -> KvsResult<Layout> {
    layout_in_row(key, row_prefix_len(key)?)
}

/// The length of the row prefix a version key starts with (its layout's `row_end`).
pub fn row_prefix_len(key: &[u8]) -> KvsResult<usize> {
    name_end(key, TABLE_PREFIX_LEN).ok_or_else(|| malformed(key))
}

/// The layout of a version key already known to start with a row prefix of `row_end` bytes
/// (found by [`row_prefix_len`], or the key starts with a [`row_prefix`]).
pub fn layout_in_row(key: &[u8], row_end: usize) -> KvsResult<Layout> {
    let cell_end = name_end(key, row_end).ok_or_else(|| malformed(key))?;
    if key.len() != cell_end + TS_LEN {
        return Err(malformed(key));
    }
    Ok(Layout { row_end, cell_end })
}

/// The row name of a row prefix (`key[..row_end]` of a key in the row, or [`row_prefix`]).
pub fn row_name(row_prefix: &[u8]) -> Vec<u8> {
    row_prefix
        .get(TABLE_PREFIX_LEN..)
        .and_then(unescape)
        .map(|(name, _)| name)
        .unwrap_or_default()
}

pub fn decode(key: &[u8]) -> KvsResult<DecodedKey> {
    let corrupt = || KvsError::Corruption {
        detail: format!("malformed version key {}", key.escape_ascii()),
    };
    let body = key.get(TABLE_PREFIX_LEN..).ok_or_else(corrupt)?;
    let (row, row_len) = unescape(body).ok_or_else(corrupt)?;
    let rest = body.get(row_len..).ok_or_else(corrupt)?;
    let (column, column_len) = unescape(rest).ok_or_else(corrupt)?;
    let cell_prefix_len = TABLE_PREFIX_LEN + row_len + column_len;
    if key.len() != cell_prefix_len + TS_LEN {
        return Err(corrupt());
    }
    let ts = ts_of(key, cell_prefix_len).ok_or_else(corrupt)?;
    Ok(DecodedKey {
        row,
        column,
        ts,
        cell_prefix_len,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![0u8, 1, 2, 0xfe, 0xff, b'a']),
            1..6,
        )
    }

    #[test]
    fn name_in_takes_exactly_one_escaped_name() {
        let mut scratch = Vec::new();
        assert_eq!(name_in(b"ab\0\x01", &mut scratch), Some(&b"ab"[..]));
        assert_eq!(name_in(b"a\0\xffb\0\x01", &mut scratch), Some(&b"a\0b"[..]));
        for bad in [
            &b"ab"[..],
            b"a\0\x01b\0\x01",
            b"a\0\x05\0\x01",
            b"\0\x01\0\x01",
        ] {
            assert_eq!(name_in(bad, &mut scratch), None, "{}", bad.escape_ascii());
        }
    }

    proptest! {
        #[test]
        fn keys_decode_to_what_was_encoded(row in name(), col in name(), ts in -1i64..i64::MAX) {
            let cell = Cell::new(row.clone(), col.clone()).unwrap();
            let key = version_key(7, &cell, ts);
            let d = decode(&key).unwrap();
            let l = layout(&key).unwrap();
            prop_assert_eq!(row_prefix_len(&key).unwrap(), row_prefix(7, &row).len());
            prop_assert_eq!(l.cell_end, d.cell_prefix_len);
            prop_assert_eq!(row_name(&key[..l.row_end]), row.clone());
            prop_assert_eq!(row_name(&row_prefix(7, &row)), row.clone());
            let mut scratch = vec![9; 3];
            prop_assert_eq!(name_in(&key[l.row_end..l.cell_end], &mut scratch), Some(col.as_slice()));
            prop_assert_eq!(row_name_in(&key[..l.row_end], &mut scratch), Some(row.as_slice()));
            prop_assert_eq!((d.row, d.column, d.ts), (row, col, ts));
        }

        #[test]
        fn key_order_is_row_then_column_ascending_then_ts_descending(
            a in (name(), name(), -1i64..50), b in (name(), name(), -1i64..50)
        ) {
            let ka = version_key(3, &Cell::new(a.0.clone(), a.1.clone()).unwrap(), a.2);
            let kb = version_key(3, &Cell::new(b.0.clone(), b.1.clone()).unwrap(), b.2);
            let logical = (a.0, a.1, std::cmp::Reverse(a.2)).cmp(&(b.0, b.1, std::cmp::Reverse(b.2)));
            prop_assert_eq!(ka.cmp(&kb), logical);
        }

        #[test]
        fn row_and_cell_bounds_enclose_exactly_their_keys(
            row in name(), col in name(), other_row in name(), other_col in name(), ts in -1i64..50
        ) {
            let key = version_key(1, &Cell::new(other_row.clone(), other_col.clone()).unwrap(), ts);
            let in_row = key >= row_prefix(1, &row) && key < row_end(1, &row);
            prop_assert_eq!(in_row, other_row == row);
            let in_cell = key >= cell_prefix(1, &row, &col) && key < cell_end(1, &row, &col);
            prop_assert_eq!(in_cell, other_row == row && other_col == col);
            prop_assert!(key >= table_start(1) && key < table_end(1));
        }
    }

    #[test]
    fn timestamp_encoding_is_descending_at_the_edges() {
        let order = [i64::MAX - 1, 1, 0, -1, -2];
        for w in order.windows(2) {
            assert!(encode_ts(w[0]) < encode_ts(w[1]));
            assert_eq!(decode_ts(encode_ts(w[0])), w[0]);
        }
    }
}
