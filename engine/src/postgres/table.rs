//! Does the sink's table fit what its serializer writes? Checked at deploy
//! and each time the sink connects.

use anyhow::{anyhow, bail, Result};
use postgres::Client;

use super::{connect, describe};
use crate::connect::shape::Column;
use crate::connect::Failure;
use crate::topology::PostgresOut;

/// The CREATE TABLE statement that fits `cols`, for error messages.
fn suggestion(table: &str, cols: &[Column]) -> String {
    let defs: Vec<String> = cols.iter().map(|c| format!("{} {}", c.name, c.ty.name())).collect();
    let keys: Vec<&str> = cols.iter().filter(|c| c.key).map(|c| c.name.as_str()).collect();
    format!("CREATE TABLE {table} ({}, PRIMARY KEY ({}))", defs.join(", "), keys.join(", "))
}

/// Checks that `table` has every column of `cols` with its type, and a
/// primary key (or unique index) on exactly the key columns.
pub(super) fn check(c: &mut Client, table: &str, cols: &[Column]) -> Result<()> {
    let q = "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1";
    let rows =
        c.query(q, &[&table]).map_err(|e| anyhow!("cannot read the columns of table `{table}`: {}", describe(&e)))?;
    if rows.is_empty() {
        bail!(
            "table `{table}` does not exist (in the connection's current schema); create it, e.g. `{}`",
            suggestion(table, cols)
        );
    }
    let found: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for col in cols {
        match found.iter().find(|(n, _)| *n == col.name) {
            None => bail!("table `{table}` has no column `{}` ({}), which the serializer writes", col.name, col.ty.name()),
            Some((_, ty)) if ty != col.ty.name() => bail!(
                "column `{}` of table `{table}` is {ty}, but the serializer writes {}; alter the column or the serializer",
                col.name,
                col.ty.name()
            ),
            Some(_) => {}
        }
    }
    check_key(c, table, cols)
}

fn check_key(c: &mut Client, table: &str, cols: &[Column]) -> Result<()> {
    let q = "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indisunique AND i.indpred IS NULL \
             GROUP BY i.indexrelid";
    let rows =
        c.query(q, &[&table]).map_err(|e| anyhow!("cannot read the keys of table `{table}`: {}", describe(&e)))?;
    let mut want: Vec<String> = cols.iter().filter(|c| c.key).map(|c| c.name.clone()).collect();
    want.sort();
    if rows.iter().any(|r| r.get::<_, Vec<String>>(0) == want) {
        return Ok(());
    }
    bail!(
        "table `{table}` has no primary key (or unique index) on ({}), the serializer's key columns: rows are upserted by \
         their key; add one, e.g. `ALTER TABLE {table} ADD PRIMARY KEY ({})`",
        want.join(", "),
        want.join(", ")
    )
}

/// What `deploy` checks of a PostgreSQL sink: the URL is set, the database
/// takes the credentials, and the table fits the serializer's columns.
pub fn check_sink(out: &PostgresOut, cols: &[Column]) -> Result<()> {
    let mut c = connect(out).map_err(|f| match f {
        Failure::Retry(e) | Failure::Stop(e) => e,
    })?;
    check(&mut c, &out.table, cols)
}
