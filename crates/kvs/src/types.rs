//! Value types of the contract: table references, cells, timestamps, values and requests.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::KvsError;

/// A logical timestamp. Versions live at `0..i64::MAX`, plus [`SWEEP_SENTINEL_TS`].
pub type Timestamp = i64;

/// The version at which sweep writes its garbage-collection sentinel (an empty value).
pub const SWEEP_SENTINEL_TS: Timestamp = -1;
/// The fixed version used by atomic tables (`put_unless_exists`, `check_and_set`).
pub const ATOMIC_TS: Timestamp = 0;
/// Largest exclusive read bound: reading at it sees every version.
pub const MAX_READ_TS: Timestamp = i64::MAX;
/// Row and column names are at most this many bytes (AtlasDB's `Cell.MAX_NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 1500;
/// Longest namespace or table name, in bytes.
pub const MAX_TABLE_NAME_LENGTH: usize = 128;

/// Checks a timestamp a version may be stored at: `0..i64::MAX`, or the sweep sentinel when
/// `allow_sentinel`.
pub fn validate_version_ts(ts: Timestamp, allow_sentinel: bool) -> Result<(), KvsError> {
    if (0..i64::MAX).contains(&ts) || (allow_sentinel && ts == SWEEP_SENTINEL_TS) {
        Ok(())
    } else {
        Err(KvsError::InvalidTimestamp {
            timestamp: ts,
            reason: if allow_sentinel {
                "a version timestamp must be in 0..i64::MAX or -1 (the sweep sentinel)"
            } else {
                "a version timestamp must be in 0..i64::MAX"
            },
        })
    }
}

/// Checks an exclusive read bound: `0..=i64::MAX` (bound 0 sees only sentinels).
pub fn validate_read_ts(ts: Timestamp) -> Result<(), KvsError> {
    if ts >= 0 {
        Ok(())
    } else {
        Err(KvsError::InvalidTimestamp {
            timestamp: ts,
            reason: "an exclusive read bound must be in 0..=i64::MAX",
        })
    }
}

/// A table: namespace plus name. The namespace is empty for system tables (whose names start
/// with `_`). Both parts are ASCII letters, digits and `_`, at most
/// [`MAX_TABLE_NAME_LENGTH`] bytes; user namespaces may not start with `_`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    namespace: String,
    name: String,
}

impl TableRef {
    /// A validated table reference.
    pub fn new(namespace: &str, name: &str) -> Result<Self, KvsError> {
        let invalid = |reason: &'static str| KvsError::InvalidTableName {
            name: format!("{namespace}.{name}"),
            reason,
        };
        let well_formed = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if name.is_empty() {
            return Err(invalid("the table name is empty"));
        }
        if name.len() > MAX_TABLE_NAME_LENGTH || namespace.len() > MAX_TABLE_NAME_LENGTH {
            return Err(invalid("namespace and name are at most 128 bytes each"));
        }
        if !well_formed(name) || !well_formed(namespace) {
            return Err(invalid(
                "namespace and name may contain only ASCII letters, digits and '_'",
            ));
        }
        if namespace.starts_with('_') {
            return Err(invalid("a namespace may not start with '_'"));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// A system table (empty namespace), e.g. `_transactions`.
    pub fn system(name: &str) -> Result<Self, KvsError> {
        Self::new("", name)
    }

    /// Parses `namespace.name` or a bare `name` (empty namespace).
    pub fn parse(qualified: &str) -> Result<Self, KvsError> {
        match qualified.split_once('.') {
            Some((ns, name)) => Self::new(ns, name),
            None => Self::new("", qualified),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `namespace.name`, or `name` for the empty namespace.
    pub fn qualified_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}.{}", self.namespace, self.name)
        }
    }
}

/// A cell: row and column names, each non-empty and at most [`MAX_NAME_LENGTH`] bytes.
/// Ordered by row then column, unsigned lexicographically.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    pub(crate) row: Vec<u8>,
    pub(crate) column: Vec<u8>,
}

impl Cell {
    pub fn new(row: impl Into<Vec<u8>>, column: impl Into<Vec<u8>>) -> Result<Self, KvsError> {
        let row = row.into();
        let column = column.into();
        validate_name(&row, "row")?;
        validate_name(&column, "column")?;
        Ok(Self { row, column })
    }

    pub fn row(&self) -> &[u8] {
        &self.row
    }

    pub fn column(&self) -> &[u8] {
        &self.column
    }

    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>) {
        (self.row, self.column)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(row {}, column {})",
            self.row.escape_ascii(),
            self.column.escape_ascii()
        )
    }
}

/// Checks a row or column name: non-empty, at most [`MAX_NAME_LENGTH`] bytes.
pub fn validate_name(name: &[u8], what: &'static str) -> Result<(), KvsError> {
    if name.is_empty() {
        return Err(KvsError::InvalidCell {
            reason: format!("the {what} name is empty"),
        });
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(KvsError::InvalidCell {
            reason: format!(
                "the {what} name is {} bytes; at most {MAX_NAME_LENGTH} are allowed",
                name.len()
            ),
        });
    }
    Ok(())
}

/// One stored version. Empty contents are a tombstone (a transactional delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub contents: Vec<u8>,
    pub timestamp: Timestamp,
}

impl Value {
    pub fn new(contents: impl Into<Vec<u8>>, timestamp: Timestamp) -> Self {
        Self {
            contents: contents.into(),
            timestamp,
        }
    }

    /// An empty value: a tombstone, or at ts -1 a sweep sentinel.
    pub fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }
}

/// Which columns of a row to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ColumnSelection {
    #[default]
    All,
    /// Only these columns (sorted, deduplicated by the constructor).
    Only(Vec<Vec<u8>>),
}

impl ColumnSelection {
    pub fn only<I, C>(columns: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<Vec<u8>>,
    {
        let mut cols: Vec<Vec<u8>> = columns.into_iter().map(Into::into).collect();
        cols.sort();
        cols.dedup();
        Self::Only(cols)
    }

    pub fn contains(&self, column: &[u8]) -> bool {
        match self {
            Self::All => true,
            Self::Only(cols) => cols.binary_search_by(|c| c.as_slice().cmp(column)).is_ok(),
        }
    }
}

/// A range of rows `[start, end)`; an empty `start` or `end` is unbounded on that side. A range
/// whose end is not after its start is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl RowRange {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: end.into(),
        }
    }

    pub fn contains(&self, row: &[u8]) -> bool {
        row >= self.start.as_slice() && (self.end.is_empty() || row < self.end.as_slice())
    }
}

/// A row-range read. Unlike AtlasDB, `rows` means `[start, end)` in both directions;
/// `reverse` only changes the order rows come back in (columns stay ascending in a row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub rows: RowRange,
    pub columns: ColumnSelection,
    pub reverse: bool,
}

impl RangeRequest {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn rows(rows: RowRange) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }
}

/// A range of columns `[start, end)` within a row; empty bounds are unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl ColumnRange {
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: end.into(),
        }
    }

    pub fn contains(&self, column: &[u8]) -> bool {
        column >= self.start.as_slice() && (self.end.is_empty() || column < self.end.as_slice())
    }
}

/// One row of a range scan: the latest visible version of each selected cell, columns ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowResult {
    pub row: Vec<u8>,
    pub columns: BTreeMap<Vec<u8>, Value>,
}

/// One cell of a [`scan_range`](crate::KeyValueService::scan_range): the latest version below
/// the read's bound, borrowed from the backend for the length of the call it is passed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellView<'a> {
    pub row: &'a [u8],
    pub column: &'a [u8],
    pub timestamp: Timestamp,
    pub contents: &'a [u8],
}

/// Which versions of a cell `delete_all_timestamps` removes: `[min, max]` where
/// `max = timestamp` if `end_inclusive` else `timestamp - 1`, and `min = -1` when
/// `delete_sentinels` else `0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampRangeDelete {
    pub timestamp: Timestamp,
    pub end_inclusive: bool,
    pub delete_sentinels: bool,
}

impl TimestampRangeDelete {
    /// The inclusive `(min, max)` of versions to delete.
    pub fn bounds(&self) -> (Timestamp, Timestamp) {
        let max = if self.end_inclusive {
            self.timestamp
        } else {
            self.timestamp.saturating_sub(1)
        };
        let min = if self.delete_sentinels {
            SWEEP_SENTINEL_TS
        } else {
            0
        };
        (min, max)
    }
}

/// Compare-and-set of one cell of an atomic table (version [`ATOMIC_TS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckAndSetRequest {
    pub cell: Cell,
    /// `None`: succeed only if the cell is absent. `Some(v)`: only if it currently holds `v`.
    pub expected: Option<Vec<u8>>,
    pub new_value: Vec<u8>,
}

/// A page request for sweep candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateCellsRequest {
    /// Resume from this cell (inclusive); `None` starts at the table's first cell.
    pub start: Option<Cell>,
    /// Only versions below this timestamp are reported.
    pub max_ts_exclusive: Timestamp,
    /// Report at most this many cells per page (at least 1).
    pub batch_size: usize,
    /// Include sentinel versions (ts -1) in `timestamps` (thorough sweep).
    pub include_sentinels: bool,
}

/// A cell with versions below the request's bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateCell {
    pub cell: Cell,
    /// Version timestamps below the bound, ascending.
    pub timestamps: Vec<Timestamp>,
    /// Whether the newest version below the bound is empty (a tombstone or a sentinel).
    pub latest_is_empty: bool,
}

/// One page of sweep candidates and where the next page starts (`None` when done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidatePage {
    pub cells: Vec<CandidateCell>,
    pub next_start: Option<Cell>,
}

/// Bytes in a `(cell, value)` write batch.
pub type CellWrites = Vec<(Cell, Vec<u8>)>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_names_are_validated() {
        assert_eq!(
            TableRef::new("app", "accounts").unwrap().to_string(),
            "app.accounts"
        );
        assert_eq!(
            TableRef::system("_transactions").unwrap().to_string(),
            "_transactions"
        );
        assert_eq!(
            TableRef::parse("app.accounts").unwrap(),
            TableRef::new("app", "accounts").unwrap()
        );
        for (ns, name) in [
            ("app", ""),
            ("app", "a.b"),
            ("a-b", "t"),
            ("_sys", "t"),
            ("app", "tab le"),
        ] {
            assert!(
                matches!(
                    TableRef::new(ns, name),
                    Err(KvsError::InvalidTableName { .. })
                ),
                "{ns}.{name}"
            );
        }
        let long = "x".repeat(MAX_TABLE_NAME_LENGTH + 1);
        assert!(TableRef::new("app", &long).is_err());
        assert!(TableRef::new(&long, "t").is_err());
    }

    #[test]
    fn cells_are_validated() {
        assert!(Cell::new("r", "c").is_ok());
        assert!(matches!(
            Cell::new("", "c"),
            Err(KvsError::InvalidCell { .. })
        ));
        assert!(matches!(
            Cell::new("r", ""),
            Err(KvsError::InvalidCell { .. })
        ));
        assert!(Cell::new(vec![1u8; MAX_NAME_LENGTH], "c").is_ok());
        let err = Cell::new(vec![1u8; MAX_NAME_LENGTH + 1], "c").unwrap_err();
        assert!(err.to_string().contains("1501 bytes"), "{err}");
    }

    #[test]
    fn timestamps_are_validated() {
        assert!(validate_version_ts(0, false).is_ok());
        assert!(validate_version_ts(i64::MAX - 1, false).is_ok());
        assert!(validate_version_ts(i64::MAX, false).is_err());
        assert!(validate_version_ts(-1, false).is_err());
        assert!(validate_version_ts(-1, true).is_ok());
        assert!(validate_version_ts(-2, true).is_err());
        assert!(validate_read_ts(0).is_ok() && validate_read_ts(i64::MAX).is_ok());
        assert!(validate_read_ts(-1).is_err());
    }

    #[test]
    fn timestamp_range_delete_bounds() {
        let d = |timestamp, end_inclusive, delete_sentinels| TimestampRangeDelete {
            timestamp,
            end_inclusive,
            delete_sentinels,
        };
        assert_eq!(d(10, false, false).bounds(), (0, 9));
        assert_eq!(d(10, true, true).bounds(), (-1, 10));
    }
}
