//! The tenant's ledger entries with `from <= created_at < to`, in `(created_at, wallet_id,
//! seq)` order, as CSV or JSON Lines, produced page by page.
//!
//! Each page is one keyset query on `ledger_entries_by_time (tenant_id, created_at, wallet_id,
//! seq)`: `(created_at, wallet_id, seq) >= <just after the last row sent>` and `created_at <
//! to`, at most [`EXPORT_PAGE_ROWS`] rows, on a connection taken from the pool for that query
//! only. The next page is read only when the consumer asks for more, so memory holds about one
//! rendered page whatever the export's size, and a slow reader holds no connection.
//!
//! Entries are stamped with the writing replica's clock and committed a little later (within
//! `pipeline.deadline_ms`), so a window that ended longer ago than that (plus any clock skew
//! between replicas) is final: exporting it again gives the same bytes. A window reaching into
//! the last few seconds may still gain entries.
//!
//! - JSON Lines: each entry exactly as the API renders a transaction (the same bytes as
//!   `GET /v1/transactions/{id}`), then `\n`.
//! - CSV (RFC 4180): a header row naming the transaction fields in the order of the
//!   transaction object ([`CSV_COLUMNS`]), then one row per entry; rows end with CRLF; a field
//!   is quoted (`"` doubled inside) when it holds a comma, a quote, CR or LF; `null` is an
//!   empty field (no text field can be empty: `reference` and `description` have at least one
//!   character); `metadata` is its JSON text. Values are exactly the API's: a spreadsheet that
//!   reads a leading `=`, `+`, `-` or `@` as a formula should import the file as text.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use futures_util::Stream;
use uuid::Uuid;

use super::LedgerReadError;
use crate::db::models::LedgerEntryRow;
use crate::db::schema::ledger_entries;
use crate::db::{PgConn, PgPool};
use crate::domain::TenantId;
use crate::representation::Transaction;

/// Entries read per query, and so about the most an export holds in memory at once.
pub const EXPORT_PAGE_ROWS: i64 = 1000;

/// The CSV header: the transaction fields in the order of the transaction object.
pub const CSV_COLUMNS: [&str; 17] = [
    "id",
    "wallet_id",
    "type",
    "amount",
    "currency",
    "balance_before",
    "balance_after",
    "seq",
    "reference",
    "description",
    "metadata",
    "idempotency_key",
    "created_at",
    "hold_id",
    "reverses",
    "prev_hash",
    "hash",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl ExportFormat {
    /// `csv` or `jsonl`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "csv" => Some(Self::Csv),
            "jsonl" => Some(Self::Jsonl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }

    /// `text/csv; charset=utf-8` (RFC 4180 with RFC 7111's charset) or `application/x-ndjson`
    /// (newline-delimited JSON, the name most tools know JSON Lines by).
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Jsonl => "application/x-ndjson",
        }
    }
}

/// What to export: a tenant's entries with `from <= created_at < to` (both bounds already
/// rounded up to the microsecond, see [`super::Instant::ceil_micros`]). `from >= to` is an
/// empty window.
#[derive(Debug, Clone, Copy)]
pub struct ExportWindow {
    pub tenant: TenantId,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Where the next page starts: the first row at or after this key.
#[derive(Debug, Clone, Copy)]
struct PageStart {
    created_at: DateTime<Utc>,
    wallet_id: Uuid,
    seq: i64,
}

impl PageStart {
    fn first(window: &ExportWindow) -> Self {
        Self {
            created_at: window.from,
            wallet_id: Uuid::nil(),
            seq: i64::MIN,
        }
    }

    /// The key right after `row` (seq is the last key column, so its successor is seq + 1).
    fn after(row: &LedgerEntryRow) -> Option<Self> {
        Some(Self {
            created_at: row.created_at,
            wallet_id: row.wallet_id,
            seq: row.seq.checked_add(1)?,
        })
    }
}

/// One page of the window, from `start`, in export order.
async fn page(
    conn: &mut PgConn,
    window: &ExportWindow,
    start: PageStart,
) -> Result<Vec<LedgerEntryRow>, diesel::result::Error> {
    // A row comparison, so the index scan starts at `start` instead of filtering from `from`.
    let from_start = sql::<Bool>("(created_at, wallet_id, seq) >= (")
        .bind::<Timestamptz, _>(start.created_at)
        .sql(", ")
        .bind::<SqlUuid, _>(start.wallet_id)
        .sql(", ")
        .bind::<BigInt, _>(start.seq)
        .sql(")");
    ledger_entries::table
        .filter(ledger_entries::tenant_id.eq(window.tenant.as_uuid()))
        .filter(from_start)
        .filter(ledger_entries::created_at.lt(window.to))
        .order((
            ledger_entries::created_at.asc(),
            ledger_entries::wallet_id.asc(),
            ledger_entries::seq.asc(),
        ))
        .limit(EXPORT_PAGE_ROWS)
        .select(LedgerEntryRow::as_select())
        .load(conn)
        .await
}

/// An export in progress: the pool it reads from, the window, and where the next page starts
/// (`None` once the last page was read).
pub struct Export {
    pool: PgPool,
    window: ExportWindow,
    format: ExportFormat,
    next: Option<PageStart>,
    /// Rendered and not yet handed out (the header and the first page).
    ready: Option<Vec<u8>>,
}

impl Export {
    /// Reads and renders the first page, so that a database that cannot answer fails the
    /// request before any byte of the body is sent; the rest comes from [`Export::into_stream`].
    pub async fn start(
        pool: PgPool,
        window: ExportWindow,
        format: ExportFormat,
    ) -> Result<Self, LedgerReadError> {
        let mut export = Self {
            pool,
            window,
            format,
            next: (window.from < window.to).then(|| PageStart::first(&window)),
            ready: None,
        };
        let mut chunk = header(format);
        chunk.extend(export.next_page().await?);
        export.ready = Some(chunk);
        Ok(export)
    }

    /// The body, chunk by chunk (about one page each). An error ends the stream: the response
    /// is then cut short, which is how an HTTP body that has begun can say it is incomplete.
    pub fn into_stream(self) -> impl Stream<Item = Result<Vec<u8>, LedgerReadError>> + 'static {
        futures_util::stream::unfold(self, |mut export| async move {
            if let Some(chunk) = export.ready.take() {
                return Some((Ok(chunk), export));
            }
            export.next?;
            match export.next_page().await {
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => Some((Ok(chunk), export)),
                Err(error) => {
                    export.next = None;
                    Some((Err(error), export))
                }
            }
        })
    }

    /// Reads the page at `next`, renders it and moves `next` past it (to `None` after the
    /// last page). Empty once the window is exhausted.
    async fn next_page(&mut self) -> Result<Vec<u8>, LedgerReadError> {
        let Some(start) = self.next else {
            return Ok(Vec::new());
        };
        let rows = {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| LedgerReadError::NoConnection(e.into()))?;
            page(&mut conn, &self.window, start).await?
        };
        self.next = match rows.last() {
            Some(last) if rows.len() as i64 == EXPORT_PAGE_ROWS => PageStart::after(last),
            _ => None,
        };
        let mut chunk = Vec::with_capacity(rows.len() * 640);
        for row in &rows {
            let entry = Transaction::from_row(row).map_err(LedgerReadError::Corrupt)?;
            render(self.format, &entry, &mut chunk).map_err(LedgerReadError::Corrupt)?;
        }
        Ok(chunk)
    }
}

/// What comes before the first entry: the CSV header row; nothing for JSON Lines.
pub fn header(format: ExportFormat) -> Vec<u8> {
    match format {
        ExportFormat::Csv => {
            let mut out = CSV_COLUMNS.join(",").into_bytes();
            out.extend_from_slice(b"\r\n");
            out
        }
        ExportFormat::Jsonl => Vec::new(),
    }
}

/// Appends one entry in `format`.
pub fn render(format: ExportFormat, entry: &Transaction, out: &mut Vec<u8>) -> anyhow::Result<()> {
    match format {
        ExportFormat::Jsonl => {
            serde_json::to_writer(&mut *out, entry)?;
            out.push(b'\n');
        }
        ExportFormat::Csv => csv_row(entry, out)?,
    }
    Ok(())
}

fn csv_row(entry: &Transaction, out: &mut Vec<u8>) -> anyhow::Result<()> {
    // Every field named, so a new field of Transaction fails to compile here until the CSV
    // says where it goes (and `csv_columns_follow_the_transaction_object` checks the order).
    let Transaction {
        id,
        wallet_id,
        kind,
        amount,
        currency,
        balance_before,
        balance_after,
        seq,
        reference,
        description,
        metadata,
        idempotency_key,
        created_at,
        hold_id,
        reverses,
        prev_hash,
        hash,
    } = entry;
    let seq = seq.to_string();
    let metadata = serde_json::to_string(metadata)?;
    let fields: [Option<&str>; CSV_COLUMNS.len()] = [
        Some(id),
        Some(wallet_id),
        Some(kind),
        Some(amount),
        Some(currency),
        Some(balance_before),
        Some(balance_after),
        Some(&seq),
        reference.as_deref(),
        description.as_deref(),
        Some(&metadata),
        Some(idempotency_key),
        Some(created_at),
        hold_id.as_deref(),
        reverses.as_deref(),
        Some(prev_hash),
        Some(hash),
    ];
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(text) = field {
            csv_field(text, out);
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// RFC 4180: quoted (with `"` doubled) when it holds a comma, a quote, CR or LF.
fn csv_field(text: &str, out: &mut Vec<u8>) {
    if text.contains([',', '"', '\r', '\n']) {
        out.push(b'"');
        for byte in text.bytes() {
            if byte == b'"' {
                out.push(b'"');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    fn entry() -> Transaction {
        Transaction {
            id: "0193a000-0000-7000-8000-000000000001".into(),
            wallet_id: "0193a000-0000-7000-8000-000000000002".into(),
            kind: "debit".into(),
            amount: "12.50".into(),
            currency: "EUR".into(),
            balance_before: "100.00".into(),
            balance_after: "87.50".into(),
            seq: 4,
            reference: Some("booking, \"123\"".into()),
            description: None,
            metadata: serde_json::json!({"a": [1, {"b": "x\ny"}], "é": 1.5}),
            idempotency_key: "key-1".into(),
            created_at: "2026-12-01T10:00:00.000001Z".into(),
            hold_id: None,
            reverses: None,
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        }
    }

    /// The member names of a JSON object, in the order they are written.
    fn member_order(json: &str) -> Vec<String> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(keys)
            }
        }
        let mut de = serde_json::Deserializer::from_str(json);
        de.deserialize_map(Keys).unwrap()
    }

    #[test]
    fn csv_columns_follow_the_transaction_object() {
        let json = serde_json::to_string(&entry()).unwrap();
        assert_eq!(member_order(&json), CSV_COLUMNS);
    }

    #[test]
    fn jsonl_lines_are_the_api_bytes() {
        let mut out = Vec::new();
        render(ExportFormat::Jsonl, &entry(), &mut out).unwrap();
        let mut expected = serde_json::to_vec(&entry()).unwrap();
        expected.push(b'\n');
        assert_eq!(out, expected);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn csv_rows_quote_what_needs_it_and_leave_null_empty() {
        let mut out = header(ExportFormat::Csv);
        render(ExportFormat::Csv, &entry(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, row) = text.split_once("\r\n").unwrap();
        assert_eq!(head, CSV_COLUMNS.join(","));
        assert_eq!(
            row,
            format!(
                "0193a000-0000-7000-8000-000000000001,0193a000-0000-7000-8000-000000000002,\
                 debit,12.50,EUR,100.00,87.50,4,\"booking, \"\"123\"\"\",,\
                 \"{{\"\"a\"\":[1,{{\"\"b\"\":\"\"x\\ny\"\"}}],\"\"é\"\":1.5}}\",key-1,\
                 2026-12-01T10:00:00.000001Z,,,{},{}\r\n",
                "0".repeat(64),
                "f".repeat(64)
            )
        );
    }

    #[test]
    fn formats_parse_by_name_only() {
        assert_eq!(ExportFormat::parse("csv"), Some(ExportFormat::Csv));
        assert_eq!(ExportFormat::parse("jsonl"), Some(ExportFormat::Jsonl));
        for other in ["CSV", "json", "", "csv "] {
            assert_eq!(ExportFormat::parse(other), None, "{other:?}");
        }
    }
}
