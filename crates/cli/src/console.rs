//! `kvs tables | get | scan`: a read-only console through the transaction layer, at a fresh
//! timestamp or a given one, through whoever owns the store.

use anyhow::{bail, Context, Result};
use ortelius_backup::{ScanAnswer, ScanRequest, StoreOwner, MAX_SCAN_ROWS};
use serde_json::{json, Map, Value};

use crate::output::Output;

/// How keys and values are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// UTF-8 text when the bytes are printable UTF-8, else hex as `0x…`.
    Auto,
    Utf8,
    Hex,
    /// Values parsed as JSON (others shown as with `auto`).
    Json,
}

/// A row or column key given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(pub Vec<u8>);

/// A key given on the command line: UTF-8 text, or bytes as `hex:00ff`.
pub fn parse_key(text: &str) -> Result<Key, String> {
    parse_bytes(text).map(Key)
}

fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    match text.strip_prefix("hex:") {
        None => Ok(text.as_bytes().to_vec()),
        Some(hex) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| format!("{text:?} is not hex: use hex:00ff (two digits a byte)"))
            })
            .collect(),
        Some(_) => Err(format!(
            "{text:?} has an odd number of hex digits: use hex:00ff (two digits a byte)"
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

/// `bytes` as text in `format` (keys never parse as JSON).
fn text(bytes: &[u8], format: Format) -> String {
    match (format, std::str::from_utf8(bytes)) {
        (Format::Hex, _) => hex(bytes),
        (Format::Utf8, Ok(s)) => s.to_owned(),
        (Format::Utf8, Err(_)) => String::from_utf8_lossy(bytes).into_owned(),
        (Format::Auto | Format::Json, Ok(s)) if !s.chars().any(char::is_control) => s.to_owned(),
        (Format::Auto | Format::Json, _) => hex(bytes),
    }
}

/// A value in `format`, as JSON: parsed JSON with `--format json`, else a string.
fn value(bytes: &[u8], format: Format) -> Value {
    if format == Format::Json {
        if let Ok(parsed) = serde_json::from_slice::<Value>(bytes) {
            return parsed;
        }
    }
    Value::String(text(bytes, format))
}

/// What to read.
pub struct Read {
    pub table: String,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub column: Option<Vec<u8>>,
    pub reverse: bool,
    pub limit: usize,
    pub at: Option<i64>,
    pub format: Format,
}

pub fn tables(owner: &dyn StoreOwner, out: Output) -> Result<()> {
    let tables = owner.tables()?;
    out.emit(&json!({ "tables": tables }), || {
        if tables.is_empty() {
            return "no tables yet".to_owned();
        }
        tables
            .iter()
            .map(|t| {
                format!(
                    "{}\tconflicts: {:?}\tsweep: {:?}",
                    t.name, t.metadata.conflict_handler, t.metadata.sweep_strategy
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// One row (`get`): an error if it is absent.
pub fn get(owner: &dyn StoreOwner, mut read: Read, out: Output) -> Result<()> {
    let row = read.start.clone();
    read.end = row.clone();
    read.end.push(0);
    read.limit = 1;
    let answer = fetch(owner, &read)?;
    if answer.rows.is_empty() {
        bail!(
            "no row {} in {} at timestamp {}",
            text(&row, Format::Auto),
            read.table,
            answer.timestamp
        );
    }
    if let Some(column) = &read.column {
        if !answer
            .rows
            .iter()
            .any(|(_, columns)| columns.iter().any(|(c, _)| c == column))
        {
            bail!(
                "row {} of {} has no column {} at timestamp {}",
                text(&row, Format::Auto),
                read.table,
                text(column, Format::Auto),
                answer.timestamp
            );
        }
    }
    print(&answer, &read, out)
}

/// Rows of a range (`scan`).
pub fn scan(owner: &dyn StoreOwner, read: Read, out: Output) -> Result<()> {
    if read.limit == 0 || read.limit > MAX_SCAN_ROWS {
        bail!("--limit must be in 1..={MAX_SCAN_ROWS}");
    }
    let answer = fetch(owner, &read)?;
    print(&answer, &read, out)?;
    if answer.more && !out.json {
        eprintln!(
            "(more rows follow; raise --limit or start the next scan after the last row shown)"
        );
    }
    Ok(())
}

fn fetch(owner: &dyn StoreOwner, read: &Read) -> Result<ScanAnswer> {
    let request = ScanRequest {
        table: read.table.clone(),
        start: read.start.clone(),
        end: read.end.clone(),
        reverse: read.reverse,
        limit: read.limit,
        at: read.at,
    };
    owner
        .scan(&request)
        .with_context(|| format!("cannot read {}", read.table))
}

fn print(answer: &ScanAnswer, read: &Read, out: Output) -> Result<()> {
    let selected = |column: &[u8]| read.column.as_deref().is_none_or(|c| c == column);
    let rows: Vec<Value> = answer
        .rows
        .iter()
        .map(|(row, columns)| {
            let columns: Map<String, Value> = columns
                .iter()
                .filter(|(c, _)| selected(c))
                .map(|(c, v)| (text(c, read.format), value(v, read.format)))
                .collect();
            json!({ "row": text(row, read.format), "columns": columns })
        })
        .collect();
    out.emit(
        &json!({ "timestamp": answer.timestamp, "rows": rows, "more": answer.more }),
        || {
            let mut lines = Vec::new();
            for (row, columns) in &answer.rows {
                for (c, v) in columns.iter().filter(|(c, _)| selected(c)) {
                    let shown = match value(v, read.format) {
                        Value::String(s) => s,
                        parsed => parsed.to_string(),
                    };
                    lines.push(format!(
                        "{}\t{}\t{shown}",
                        text(row, read.format),
                        text(c, read.format)
                    ));
                }
            }
            lines.push(format!(
                "# {} row(s) at timestamp {}",
                answer.rows.len(),
                answer.timestamp
            ));
            lines.join("\n")
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_parse_as_text_or_hex_and_values_render_by_format() {
        assert_eq!(parse_key("alice").unwrap().0, b"alice");
        assert_eq!(parse_key("hex:00ff").unwrap().0, vec![0, 255]);
        assert!(parse_key("hex:0").unwrap_err().contains("odd"));
        assert!(parse_key("hex:zz").unwrap_err().contains("not hex"));
        assert_eq!(text(b"100", Format::Auto), "100");
        assert_eq!(text(&[0, 1], Format::Auto), "0x0001");
        assert_eq!(text(b"ab", Format::Hex), "0x6162");
        assert_eq!(value(br#"{"a":1}"#, Format::Json), json!({"a": 1}));
        assert_eq!(value(b"not json", Format::Json), json!("not json"));
        assert_eq!(value(br#"{"a":1}"#, Format::Auto), json!(r#"{"a":1}"#));
    }
}
