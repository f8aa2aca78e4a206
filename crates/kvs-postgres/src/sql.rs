//! SQL text for one data table (`"<schema>".t_<id>`), built per shape of request. Statements
//! are prepared once per connection and cached by their text.

/// The relation of a table id.
pub(crate) fn relation(schema: &str, id: i64) -> String {
    format!("\"{schema}\".t_{id}")
}

pub(crate) fn create_table(rel: &str) -> String {
    format!(
        "CREATE TABLE {rel} (row_name bytea NOT NULL, col_name bytea NOT NULL, ts bigint NOT NULL, \
         val bytea NOT NULL, PRIMARY KEY (row_name, col_name, ts))"
    )
}

/// Latest version below a per-cell bound, one index probe per cell: `$1` rows, `$2` columns,
/// `$3` bounds; answers (ordinal, ts, val).
pub(crate) fn get_cells(rel: &str, with_values: bool) -> String {
    let val = if with_values { ", v.val" } else { "" };
    let inner_val = if with_values { ", t.val" } else { "" };
    format!(
        "SELECT k.i, v.ts{val} FROM unnest($1::bytea[], $2::bytea[], $3::int8[]) WITH ORDINALITY AS k(r, c, b, i) \
         CROSS JOIN LATERAL (SELECT t.ts{inner_val} FROM {rel} t WHERE t.row_name = k.r AND t.col_name = k.c \
         AND t.ts < k.b ORDER BY t.ts DESC LIMIT 1) v"
    )
}

/// Latest version below `$3` of the one cell (`$1`, `$2`); answers (ts, val). A plain index
/// probe: for a single cell it answers in about two thirds of the time of [`get_cells`], whose
/// arrays and lateral join cost the server more than the probe itself.
pub(crate) fn get_cell(rel: &str, with_values: bool) -> String {
    let val = if with_values { ", val" } else { "" };
    format!(
        "SELECT ts{val} FROM {rel} WHERE row_name = $1 AND col_name = $2 AND ts < $3 \
         ORDER BY ts DESC LIMIT 1"
    )
}

/// Latest version below `$2` of every (selected) cell of rows `$1` (columns `$3`).
pub(crate) fn get_rows(rel: &str, only_columns: bool) -> String {
    let cols = if only_columns {
        " AND col_name = ANY($3)"
    } else {
        ""
    };
    format!(
        "SELECT DISTINCT ON (row_name, col_name) row_name, col_name, ts, val FROM {rel} \
         WHERE row_name = ANY($1) AND ts < $2{cols} ORDER BY row_name, col_name, ts DESC"
    )
}

/// The shape of one page of a range scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RangeShape {
    pub has_start: bool,
    pub has_end: bool,
    pub has_cursor: bool,
    pub only_columns: bool,
    pub reverse: bool,
}

/// One page of a range scan, `LIMIT $2`, below the read timestamp `$1`; then the optional
/// parameters in order: start, end, cursor row, cursor column (and cursor timestamp forward),
/// columns.
///
/// Forward, a page is every version below `$1` in primary-key order — an index range scan that
/// stops after the page; the caller keeps the newest version of each cell (the last one seen).
/// `DISTINCT ON` would need `ts DESC` inside an ascending key, which the ascending primary key
/// cannot give, so PostgreSQL would sort the whole rest of the table for every page. Backward
/// the key order is `ts DESC` already, so `DISTINCT ON` keeps the newest version per cell on a
/// backward index scan.
pub(crate) fn range_page(rel: &str, shape: RangeShape) -> String {
    let mut conditions = vec!["ts < $1".to_owned()];
    let mut n = 2;
    let mut param = || {
        n += 1;
        n
    };
    if shape.has_start {
        conditions.push(format!("row_name >= ${}", param()));
    }
    if shape.has_end {
        conditions.push(format!("row_name < ${}", param()));
    }
    if shape.has_cursor {
        let (r, c) = (param(), param());
        conditions.push(if shape.reverse {
            format!("(row_name, col_name) < (${r}, ${c})")
        } else {
            format!("(row_name, col_name, ts) > (${r}, ${c}, ${})", param())
        });
    }
    if shape.only_columns {
        conditions.push(format!("col_name = ANY(${})", param()));
    }
    let conditions = conditions.join(" AND ");
    if shape.reverse {
        format!(
            "SELECT DISTINCT ON (row_name, col_name) row_name, col_name, ts, val FROM {rel} \
             WHERE {conditions} ORDER BY row_name DESC, col_name DESC, ts DESC LIMIT $2"
        )
    } else {
        format!(
            "SELECT row_name, col_name, ts, val FROM {rel} WHERE {conditions} \
             ORDER BY row_name, col_name, ts LIMIT $2"
        )
    }
}

/// One page of a column range of one row `$1`, below `$2`, `LIMIT $3`, then optional start,
/// end and cursor columns.
pub(crate) fn column_range_page(
    rel: &str,
    has_start: bool,
    has_end: bool,
    has_cursor: bool,
) -> String {
    let mut conditions = vec!["row_name = $1".to_owned(), "ts < $2".to_owned()];
    let mut n = 3;
    if has_start {
        n += 1;
        conditions.push(format!("col_name >= ${n}"));
    }
    if has_end {
        n += 1;
        conditions.push(format!("col_name < ${n}"));
    }
    if has_cursor {
        n += 1;
        conditions.push(format!("col_name > ${n}"));
    }
    format!(
        "SELECT DISTINCT ON (col_name) col_name, ts, val FROM {rel} WHERE {} \
         ORDER BY col_name, ts DESC LIMIT $3",
        conditions.join(" AND ")
    )
}

/// Every version timestamp below `$3` of cells `$1`/`$2`, by cell ordinal then ascending.
pub(crate) fn all_timestamps(rel: &str) -> String {
    format!(
        "SELECT k.i, t.ts FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS k(r, c, i) \
         JOIN {rel} t ON t.row_name = k.r AND t.col_name = k.c WHERE t.ts < $3 ORDER BY k.i, t.ts"
    )
}

/// A page of sweep candidates: cells with versions below `$1`, newest first, `LIMIT $2`, from
/// cell (`$3`, `$4`) on when `from`.
pub(crate) fn candidates(rel: &str, from: bool) -> String {
    let start = if from {
        " AND (row_name, col_name) >= ($3, $4)"
    } else {
        ""
    };
    format!(
        "SELECT row_name, col_name, array_agg(ts ORDER BY ts DESC), array_agg(length(val) = 0 ORDER BY ts DESC) \
         FROM {rel} WHERE ts < $1{start} GROUP BY row_name, col_name ORDER BY row_name, col_name LIMIT $2"
    )
}

/// Writes versions (`$1` rows, `$2` columns, `$3` timestamps, `$4` values) unless some
/// (cell, ts) already holds a different value; answers `('d', cell)` for such a difference
/// (then nothing is written) or `('i', cell)` for every version inserted. With
/// `reading_latest`, also `('l', cell, ts)` for each cell's newest version as it was before
/// this statement (all parts of one statement read the same snapshot, which the insert is not
/// part of).
pub(crate) fn put_versions(rel: &str, reading_latest: bool) -> String {
    let latest = if reading_latest {
        format!(
            " UNION ALL SELECT 'l', i.r, i.c, n.ts FROM input i CROSS JOIN LATERAL \
             (SELECT x.ts FROM {rel} x WHERE x.row_name = i.r AND x.col_name = i.c ORDER BY x.ts DESC LIMIT 1) n"
        )
    } else {
        String::new()
    };
    format!(
        "WITH input(r, c, t, v) AS (SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[])), \
         differing AS (SELECT i.r, i.c, i.t FROM input i JOIN {rel} x ON x.row_name = i.r AND x.col_name = i.c \
           AND x.ts = i.t WHERE x.val <> i.v LIMIT 1), \
         inserted AS (INSERT INTO {rel} (row_name, col_name, ts, val) SELECT r, c, t, v FROM input \
           WHERE NOT EXISTS (SELECT 1 FROM differing) ON CONFLICT DO NOTHING RETURNING row_name, col_name, ts) \
         SELECT 'd', r, c, t FROM differing UNION ALL SELECT 'i', row_name, col_name, ts FROM inserted{latest}"
    )
}

/// Writes one version (`$1` row, `$2` column, `$3` ts, `$4` value) unless its (cell, ts)
/// exists; answers a row if it was inserted. The single-version form of [`put_versions`].
pub(crate) fn put_version(rel: &str) -> String {
    format!(
        "INSERT INTO {rel} (row_name, col_name, ts, val) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING 1"
    )
}

/// [`put_version`] that also reads the cell's newest version as it was before this statement;
/// answers one row: (inserted, that version's ts or null).
pub(crate) fn put_version_reading_latest(rel: &str) -> String {
    format!(
        "WITH ins AS ({}) SELECT EXISTS (SELECT 1 FROM ins), \
         (SELECT ts FROM {rel} WHERE row_name = $1 AND col_name = $2 ORDER BY ts DESC LIMIT 1)",
        put_version(rel)
    )
}

/// The value of one version (`$1` row, `$2` column, `$3` ts).
pub(crate) fn read_version(rel: &str) -> String {
    format!("SELECT val FROM {rel} WHERE row_name = $1 AND col_name = $2 AND ts = $3")
}

/// The first input version whose (cell, ts) holds a different value.
pub(crate) fn find_differing(rel: &str) -> String {
    format!(
        "SELECT i.r, i.c, i.t FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bytea[]) AS i(r, c, t, v) \
         JOIN {rel} x ON x.row_name = i.r AND x.col_name = i.c AND x.ts = i.t WHERE x.val <> i.v LIMIT 1"
    )
}

pub(crate) fn insert_atomic_one(rel: &str) -> String {
    format!(
        "INSERT INTO {rel} (row_name, col_name, ts, val) VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING RETURNING 1"
    )
}

pub(crate) fn insert_atomic_many(rel: &str) -> String {
    format!(
        "INSERT INTO {rel} (row_name, col_name, ts, val) SELECT r, c, 0, v FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS k(r, c, v) \
         ON CONFLICT DO NOTHING RETURNING row_name, col_name"
    )
}

pub(crate) fn compare_and_swap(rel: &str) -> String {
    format!(
        "UPDATE {rel} SET val = $4 WHERE row_name = $1 AND col_name = $2 AND ts = 0 AND val = $3 RETURNING 1"
    )
}

pub(crate) fn read_atomic(rel: &str) -> String {
    format!("SELECT val FROM {rel} WHERE row_name = $1 AND col_name = $2 AND ts = 0")
}

pub(crate) fn delete_versions(rel: &str) -> String {
    format!(
        "DELETE FROM {rel} t USING unnest($1::bytea[], $2::bytea[], $3::int8[]) AS k(r, c, ts) \
         WHERE t.row_name = k.r AND t.col_name = k.c AND t.ts = k.ts"
    )
}

pub(crate) fn delete_timestamp_ranges(rel: &str) -> String {
    format!(
        "DELETE FROM {rel} t USING unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int8[]) AS k(r, c, lo, hi) \
         WHERE t.row_name = k.r AND t.col_name = k.c AND t.ts BETWEEN k.lo AND k.hi"
    )
}

pub(crate) fn delete_rows(rel: &str, has_start: bool, has_end: bool) -> String {
    match (has_start, has_end) {
        (true, true) => format!("DELETE FROM {rel} WHERE row_name >= $1 AND row_name < $2"),
        (true, false) => format!("DELETE FROM {rel} WHERE row_name >= $1"),
        (false, true) => format!("DELETE FROM {rel} WHERE row_name < $1"),
        (false, false) => format!("DELETE FROM {rel}"),
    }
}

pub(crate) fn add_sentinels(rel: &str) -> String {
    format!(
        "INSERT INTO {rel} (row_name, col_name, ts, val) SELECT r, c, -1, ''::bytea \
         FROM unnest($1::bytea[], $2::bytea[]) AS k(r, c) ON CONFLICT DO NOTHING"
    )
}
