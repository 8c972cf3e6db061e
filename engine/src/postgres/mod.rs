//! The PostgreSQL connector sink: one database transaction per round that
//! upserts the round's rows (binary COPY into a staging table, then one
//! `INSERT … SELECT … ON CONFLICT DO UPDATE` per chunk) and records the
//! round in `hailstorm_sink_rounds` — only while the sink's fence is still
//! the one it took when it opened: a newer instance bumps the fence, so an
//! older one's round updates no row, rolls back and stops.
//!
//! **Architecture invariant:** `postgres/` is the only code that uses the
//! `postgres` crate.

mod copy;
mod table;

use anyhow::anyhow;
use hailstorm_abi::Item;
use postgres::{Client, NoTls};

use crate::connect::shape::Column;
use crate::connect::{Failure, Writer};
use crate::topology::PostgresOut;

pub use table::check_sink;

/// The table that records each sink's round and fence.
pub const ROUNDS_TABLE: &str = "hailstorm_sink_rounds";

/// How long the server lets a session sit idle inside a transaction: a
/// paused (fenced-off) sink cannot hold its locks past it.
const IDLE_IN_TRANSACTION: &str = "10s";

/// The staging table of a session.
const STAGE: &str = "hailstorm_stage";

/// Writes one sink's rounds into a table, exactly once.
pub struct PgWriter {
    out: PostgresOut,
    /// `TOPOLOGY/SINK`: the sink's row in [`ROUNDS_TABLE`].
    sink: String,
    columns: Vec<Column>,
    client: Option<Client>,
    fence: i64,
    /// The statements of a chunk, made once.
    copy_sql: String,
    upsert_sql: String,
}

impl PgWriter {
    pub fn new(out: &PostgresOut, topology: &str, sink: &str, columns: Vec<Column>) -> PgWriter {
        let (copy_sql, upsert_sql) = copy::statements(&out.table, &columns);
        PgWriter {
            out: out.clone(),
            sink: format!("{topology}/{sink}"),
            columns,
            client: None,
            fence: 0,
            copy_sql,
            upsert_sql,
        }
    }

    /// The failure for a database error: retried unless no retry can help.
    fn failed(&mut self, what: &str, e: &postgres::Error) -> Failure {
        let text = anyhow!("{what} on {}: {}", self.target(), describe(e));
        if permanent(e) {
            Failure::Stop(text)
        } else {
            self.client = None;
            Failure::Retry(text)
        }
    }

    fn exec(&mut self, what: &str, sql: &str) -> Result<(), Failure> {
        let r = connected(&mut self.client)?.batch_execute(sql);
        r.map_err(|e| self.failed(what, &e))
    }
}

/// The open connection (a field borrow, so the other fields stay usable).
fn connected(client: &mut Option<Client>) -> Result<&mut Client, Failure> {
    client.as_mut().ok_or_else(|| Failure::retry(anyhow!("internal: not connected")))
}

/// One chunk: a binary COPY into the staging table, then the upsert from it.
fn copy_and_upsert(c: &mut Client, copy_sql: &str, upsert_sql: &str, data: &[u8]) -> Result<(), postgres::Error> {
    let mut w = c.copy_in(copy_sql)?;
    if let Err(e) = std::io::Write::write_all(&mut w, data) {
        // The connection broke mid-copy; `finish` reports it.
        tracing::debug!("COPY: {e}");
    }
    w.finish()?;
    c.batch_execute(upsert_sql)
}

/// The error's text with the server's detail, if it sent one.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => format!("{e}"),
    }
}

/// Whether retrying cannot help: bad credentials, a missing or unfit
/// table, data the table refuses.
fn permanent(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else { return false };
    let class = db.code().code().get(..2).unwrap_or("");
    matches!(class, "28" | "42" | "22" | "23" | "3D" | "0A")
}

/// Connects to the database the environment variable `url_env` names.
pub(crate) fn connect(out: &PostgresOut) -> Result<Client, Failure> {
    let url = std::env::var(&out.url_env).map_err(|_| {
        Failure::stop(anyhow!(
            "the environment variable {} is not set: it must hold the database's connection URL \
             (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
            out.url_env
        ))
    })?;
    Client::connect(&url, NoTls).map_err(|e| {
        let text =
            anyhow!("cannot connect to the database of {} (table `{}`): {}", out.url_env, out.table, describe(&e));
        if permanent(&e) {
            Failure::Stop(text)
        } else {
            Failure::Retry(text)
        }
    })
}

impl Writer for PgWriter {
    fn open(&mut self) -> Result<u64, Failure> {
        self.client = None;
        let mut c = connect(&self.out)?;
        table::check(&mut c, &self.out.table, &self.columns).map_err(Failure::Stop)?;
        self.client = Some(c);
        let setup = format!(
            "SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}';
             CREATE TABLE IF NOT EXISTS {ROUNDS_TABLE} (sink text PRIMARY KEY, fence bigint NOT NULL, round bigint NOT NULL);
             CREATE TEMP TABLE IF NOT EXISTS {STAGE} AS SELECT {} FROM {} WITH NO DATA;",
            copy::column_list(&self.columns),
            copy::quote(&self.out.table)
        );
        self.exec("preparing the session", &setup)?;
        let bump = format!(
            "INSERT INTO {ROUNDS_TABLE} (sink, fence, round) VALUES ($1, 1, 0)
             ON CONFLICT (sink) DO UPDATE SET fence = {ROUNDS_TABLE}.fence + 1 RETURNING fence, round"
        );
        let row = connected(&mut self.client)?.query_one(&bump, &[&self.sink]);
        let row = row.map_err(|e| self.failed("taking the sink's fence", &e))?;
        let (fence, round): (i64, i64) = (row.get(0), row.get(1));
        self.fence = fence;
        Ok(u64::try_from(round).unwrap_or(0))
    }

    fn begin(&mut self, _round: u64) -> Result<(), Failure> {
        self.exec("beginning a transaction", "BEGIN")
    }

    fn write(&mut self, items: &[Item<'_>]) -> Result<(), Failure> {
        let data = copy::binary(items, &self.columns);
        let r = copy_and_upsert(connected(&mut self.client)?, &self.copy_sql, &self.upsert_sql, &data);
        r.map_err(|e| self.failed(&format!("writing {} rows", items.len()), &e))
    }

    fn commit(&mut self, round: u64) -> Result<(), Failure> {
        let sql = format!("UPDATE {ROUNDS_TABLE} SET round = $1 WHERE sink = $2 AND fence = $3");
        let fence = self.fence;
        let r = i64::try_from(round).map_err(|_| Failure::stop(anyhow!("round {round} is out of bigint's range")))?;
        let n = connected(&mut self.client)?.execute(&sql, &[&r, &self.sink, &fence]);
        match n.map_err(|e| self.failed(&format!("recording round {round}"), &e))? {
            1 => self.exec(&format!("committing round {round}"), "COMMIT"),
            _ => {
                self.abort();
                Err(Failure::stop(anyhow!(
                    "round {round} was not written to {}: a newer instance of sink `{}` took over (its fence in {ROUNDS_TABLE} moved past {fence}), so this one stops",
                    self.target(), self.sink
                )))
            }
        }
    }

    fn abort(&mut self) {
        if let Some(c) = self.client.as_mut() {
            if c.batch_execute("ROLLBACK").is_err() {
                self.client = None;
            }
        }
    }

    fn target(&self) -> String {
        format!("PostgreSQL table `{}` ({})", self.out.table, self.out.url_env)
    }
}
