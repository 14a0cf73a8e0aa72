//! `GET /v1/ledger/export` (API.md, Ledger integrity and audit): the tenant's entries with
//! `from <= created_at < to` in `(created_at, wallet_id, seq)` order, as CSV or JSON Lines,
//! streamed in keyset pages; and `scripts/verify_chain.py`, which recomputes the chain from an
//! export with no walletd code.

use std::str::FromStr;

use chrono::{DateTime, Duration as TimeDelta, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;
use walletd::db::models::{LedgerEntryRow, NewLedgerEntry};
use walletd::db::schema::ledger_entries;
use walletd::domain::Scope;
use walletd::ledger_audit::export::{CSV_COLUMNS, EXPORT_PAGE_ROWS};
use walletd::representation::{GENESIS_HASH, Transaction, render_timestamp};

use crate::helpers::{TestApp, assert_problem, new_key};

/// The transaction fields in the order of the transaction object (API.md plus Part 2).
const FIELDS: [&str; 17] = [
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

pub async fn export_as(app: &TestApp, api_key: &str, query: &str) -> Response {
    app.get_as(api_key, &format!("/v1/ledger/export?{query}"))
        .await
}

/// `from`/`to` as query values (RFC 3339, `+` percent-encoded).
pub fn q(at: DateTime<Utc>) -> String {
    render_timestamp(at).replace('+', "%2B")
}

pub fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A window around everything these tests write.
fn everything() -> String {
    format!(
        "from={}&to={}",
        q(Utc::now() - TimeDelta::days(1)),
        q(Utc::now() + TimeDelta::days(1))
    )
}

pub async fn export_jsonl(app: &TestApp, api_key: &str, window: &str) -> String {
    let response = export_as(app, api_key, &format!("{window}&format=jsonl")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    response.text().await.unwrap()
}

/// Posts a credit or debit with this body (currency EUR) and returns the transaction.
pub async fn entry(app: &TestApp, wallet: &str, kind: &str, body: Value) -> Value {
    let mut body = body;
    body["currency"] = json!("EUR");
    let response = app
        .post(&format!("/v1/wallets/{wallet}/{kind}"), &new_key(), &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// The export order.
fn export_key(entry: &Value) -> (DateTime<Utc>, String, i64) {
    (
        parse_time(entry["created_at"].as_str().unwrap()),
        entry["wallet_id"].as_str().unwrap().to_owned(),
        entry["seq"].as_i64().unwrap(),
    )
}

/// RFC 4180 records (CRLF or LF line ends, quoted fields with doubled quotes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted field");
    assert!(field.is_empty() && record.is_empty(), "no final line end");
    records
}

/// Two wallets of the app's tenant with interleaved entries (metadata of every kind, a
/// reference that needs CSV quoting), and one wallet of another tenant.
struct Fixture {
    app: TestApp,
    /// Every entry of the app's tenant, as the API returned it.
    entries: Vec<Value>,
    other_key: String,
    other_entries: Vec<Value>,
}

async fn fixture() -> Fixture {
    let app = TestApp::spawn().await;
    let first = app.create_wallet("EUR").await;
    let second = app.create_wallet("EUR").await;
    let mut entries = Vec::new();
    for (i, wallet) in [&first, &second, &first, &second, &first]
        .into_iter()
        .enumerate()
    {
        let body = json!({
            "amount": format!("{}.50", 10 + i),
            "reference": format!("booking, \"{i}\""),
            "description": "Booking payment",
            "metadata": {"i": i, "rate": 1.5, "nested": {"é": [0.000001, 123456789012345_i64]}},
        });
        entries.push(entry(&app, wallet, "credit", body).await);
    }
    entries.push(entry(&app, &second, "debit", json!({"amount": "1.00"})).await);
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let other_wallet = create_wallet_as(&app, &other_key).await;
    let other_entries = vec![
        entry_as(
            &app,
            &other_key,
            &other_wallet,
            json!({"amount": "5.00", "currency": "EUR"}),
        )
        .await,
    ];
    Fixture {
        app,
        entries,
        other_key,
        other_entries,
    }
}

async fn create_wallet_as(app: &TestApp, api_key: &str) -> String {
    let response = app
        .post_as(
            api_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn entry_as(app: &TestApp, api_key: &str, wallet: &str, body: Value) -> Value {
    let response = app
        .post_as(
            api_key,
            &format!("/v1/wallets/{wallet}/credit"),
            &new_key(),
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// JSON Lines: one line per entry, each the same bytes as `GET /v1/transactions/{id}`, in
/// `(created_at, wallet_id, seq)` order, and only the caller's tenant's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_is_the_api_bytes_in_export_order_for_the_tenant_only() {
    let fixture = fixture().await;
    let app = &fixture.app;
    let body = export_jsonl(app, &app.api_key, &everything()).await;
    assert!(body.ends_with('\n'));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), fixture.entries.len());
    let mut expected = fixture.entries.clone();
    expected.sort_by_key(export_key);
    for (line, entry) in lines.iter().zip(&expected) {
        let id = entry["id"].as_str().unwrap();
        let api = app.get(&format!("/v1/transactions/{id}")).await;
        assert_eq!(api.status(), StatusCode::OK);
        assert_eq!(*line, api.text().await.unwrap(), "line of {id}");
    }
    // The keys of each line in transaction order.
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first.as_object().unwrap().len(), FIELDS.len());

    // The other tenant sees only its own entry.
    let other = export_jsonl(app, &fixture.other_key, &everything()).await;
    let other: Vec<Value> = other
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(other, fixture.other_entries);
}

/// CSV: a header naming the transaction fields in transaction order, then one row per entry
/// with each field as the API renders it (`metadata` as JSON text, `null` as empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_has_the_header_and_one_row_per_entry() {
    let fixture = fixture().await;
    let app = &fixture.app;
    let response = export_as(app, &app.api_key, &format!("{}&format=csv", everything())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.headers()["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"ledger-export.csv\""
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\r\n"));
    let records = parse_csv(&text);
    assert_eq!(records[0], FIELDS);
    assert_eq!(CSV_COLUMNS, FIELDS);
    let mut expected = fixture.entries.clone();
    expected.sort_by_key(export_key);
    assert_eq!(records.len(), expected.len() + 1);
    for (row, entry) in records[1..].iter().zip(&expected) {
        for (field, value) in FIELDS.iter().zip(row) {
            match &entry[*field] {
                Value::Null => assert_eq!(value, "", "{field}"),
                Value::String(text) => assert_eq!(value, text, "{field}"),
                Value::Number(n) => assert_eq!(value, &n.to_string(), "{field}"),
                object => {
                    assert_eq!(value, &serde_json::to_string(object).unwrap(), "{field}");
                    assert_eq!(&serde_json::from_str::<Value>(value).unwrap(), object);
                }
            }
        }
    }
    // A quoted reference survived: `booking, "0"`.
    assert!(text.contains("\"booking, \"\"0\"\"\""));
}

/// `from` is inclusive and `to` exclusive, to the microsecond; a finer bound is rounded up,
/// as `created_at` has microseconds; an offset is the same instant in UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_is_inclusive_and_to_exclusive() {
    let fixture = fixture().await;
    let app = &fixture.app;
    let mut entries = fixture.entries.clone();
    entries.sort_by_key(export_key);
    let at = |i: usize| parse_time(entries[i]["created_at"].as_str().unwrap());
    let ids = |body: String| -> Vec<String> {
        body.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let expected = |range: std::ops::Range<usize>| -> Vec<String> {
        entries[range]
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let window = |from: String, to: String| format!("from={from}&to={to}");

    let body = export_jsonl(app, &app.api_key, &window(q(at(1)), q(at(4)))).await;
    assert_eq!(ids(body), expected(1..4));

    // Half a microsecond past an entry's instant excludes it from `from` and includes it
    // before `to`.
    let plus_half = |t: DateTime<Utc>| {
        let text = render_timestamp(t);
        format!("{}5Z", text.trim_end_matches('Z'))
    };
    let body = export_jsonl(
        app,
        &app.api_key,
        &window(plus_half(at(1)), plus_half(at(4))),
    )
    .await;
    assert_eq!(ids(body), expected(2..5));

    // The same instants with an offset.
    let in_paris = |t: DateTime<Utc>| {
        let shifted = t + TimeDelta::hours(1);
        shifted.format("%Y-%m-%dT%H:%M:%S%.6f%%2B01:00").to_string()
    };
    let body = export_jsonl(app, &app.api_key, &window(in_paris(at(1)), in_paris(at(4)))).await;
    assert_eq!(ids(body), expected(1..4));

    // An empty window, and one the wrong way round: nothing (CSV: the header alone).
    let body = export_jsonl(app, &app.api_key, &window(q(at(2)), q(at(2)))).await;
    assert_eq!(body, "");
    let response = export_as(
        app,
        &app.api_key,
        &format!("{}&format=csv", window(q(at(4)), q(at(1)))),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        format!("{}\r\n", FIELDS.join(","))
    );
}

/// Missing or malformed parameters are 400 validation_failed; without ledger:read, 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused() {
    let app = TestApp::spawn().await;
    let now = q(Utc::now());
    for query in [
        String::new(),
        format!("to={now}&format=csv"),
        format!("from={now}&format=csv"),
        format!("from={now}&to={now}"),
        format!("from={now}&to={now}&format=xml"),
        format!("from={now}&to={now}&format=CSV"),
        format!("from=junk&to={now}&format=csv"),
        format!("from={now}&to=2026-12-01&format=jsonl"),
        format!("from={now}&to=2026-12-01T00:00:00&format=jsonl"),
        // An unencoded '+' is a space in a query string.
        format!("from={now}&to=2026-12-01T00:00:00+01:00&format=jsonl"),
        format!("from={now}&from={now}&to={now}&format=csv"),
        format!("from={now}&to={now}&format=csv&format=jsonl"),
    ] {
        let response = export_as(&app, &app.api_key, &query).await;
        assert_problem(response, 400, "validation_failed").await;
    }
    let (_, wallets_only) = app
        .new_tenant(&[Scope::WalletsRead, Scope::WalletsWrite])
        .await;
    let response = export_as(
        &app,
        &wallets_only,
        &format!("from={now}&to={now}&format=csv"),
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let response = app
        .client
        .get(app.url(&format!("/v1/ledger/export?from={now}&to={now}&format=csv")))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
}

/// Seeds `count` entries straight into the database for a wallet created through the API,
/// chained exactly as the service chains them (`Transaction::sealed`), with `created_at(i)`,
/// and moves the wallet row to match. Credits of 1.00, except every 5th entry, a debit of
/// 0.50. Inserts many rows per statement, with the append-only and chain triggers off for
/// this transaction only (`SET LOCAL session_replication_role = replica`); the idempotency
/// rows the entries name are written too, so every constraint still holds afterwards.
pub async fn seed_chain(
    app: &TestApp,
    wallet: &str,
    count: i64,
    created_at: impl Fn(i64) -> DateTime<Utc>,
) {
    let wallet_id = Uuid::parse_str(wallet).unwrap();
    let tenant_id = Uuid::parse_str(&app.tenant_id).unwrap();
    let mut rows = Vec::new();
    let mut balance = Decimal::ZERO;
    let mut last_hash = GENESIS_HASH.to_owned();
    for seq in 1..=count {
        let (kind, amount) = if seq % 5 == 0 {
            ("debit", Decimal::from_str("0.50").unwrap())
        } else {
            ("credit", Decimal::from_str("1.00").unwrap())
        };
        let after = if kind == "credit" {
            balance + amount
        } else {
            balance - amount
        };
        let mut row = LedgerEntryRow {
            wallet_id,
            seq,
            id: Uuid::now_v7(),
            tenant_id,
            entry_type: kind.to_owned(),
            amount,
            currency: "EUR".into(),
            balance_before: balance,
            balance_after: after,
            reference: Some(format!("seed-{seq}")),
            description: None,
            metadata: json!({"seq": seq, "rate": 1.5}),
            idempotency_key: format!("seed-{wallet}-{seq}"),
            created_at: created_at(seq),
            direction: None,
            hold_id: None,
            reverses: None,
            prev_hash: Some(last_hash.clone()),
            hash: None,
        };
        let sealed = Transaction::sealed(&row, &last_hash).unwrap();
        row.hash = Some(sealed.hash.clone());
        last_hash = sealed.hash;
        balance = after;
        rows.push(row);
    }
    let mut db = app.db().await;
    db.transaction(async |c| {
        c.batch_execute("SET LOCAL session_replication_role = replica")
            .await?;
        for chunk in rows.chunks(500) {
            let values: Vec<NewLedgerEntry<'_>> = chunk.iter().map(new_entry).collect();
            diesel::insert_into(ledger_entries::table)
                .values(&values)
                .execute(c)
                .await?;
        }
        c.batch_execute(&format!(
            "INSERT INTO idempotency_keys (result_id, tenant_id, idempotency_key, fingerprint, \
                 wallet_id, state, response_status, response_body, created_at, completed_at) \
             SELECT walletd_result_id(tenant_id, idempotency_key), tenant_id, idempotency_key, \
                 sha256(idempotency_key::bytea), wallet_id, \
                 'completed', 201, '\\x7b7d'::bytea, created_at, created_at \
             FROM ledger_entries WHERE wallet_id = '{wallet_id}'; \
             UPDATE wallets SET balance = {balance}, last_seq = {count}, \
                 last_hash = '{last_hash}', version = version + {count} \
             WHERE id = '{wallet_id}';"
        ))
        .await?;
        Ok::<_, diesel::result::Error>(())
    })
    .await
    .unwrap();
}

fn new_entry(row: &LedgerEntryRow) -> NewLedgerEntry<'_> {
    NewLedgerEntry {
        wallet_id: row.wallet_id,
        seq: row.seq,
        id: row.id,
        tenant_id: row.tenant_id,
        entry_type: &row.entry_type,
        amount: row.amount,
        currency: &row.currency,
        balance_before: row.balance_before,
        balance_after: row.balance_after,
        reference: row.reference.as_deref(),
        description: row.description.as_deref(),
        metadata: &row.metadata,
        idempotency_key: &row.idempotency_key,
        created_at: row.created_at,
        direction: row.direction.as_deref(),
        hold_id: row.hold_id,
        reverses: row.reverses,
        prev_hash: row.prev_hash.as_deref().unwrap(),
        hash: row.hash.as_deref().unwrap(),
    }
}

/// Several pages (more than EXPORT_PAGE_ROWS entries), with many entries sharing one
/// `created_at` across wallets so that page boundaries fall inside runs of equal times: every
/// entry comes exactly once, in `(created_at, wallet_id, seq)` order. The database's own
/// deferred checks pass on the seeded data (the seeding is valid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_page_export_keeps_the_order_across_equal_timestamps() {
    let app = TestApp::spawn().await;
    let base = Utc::now() - TimeDelta::hours(1);
    let per_wallet = EXPORT_PAGE_ROWS + 250;
    let mut wallets = Vec::new();
    for _ in 0..3 {
        let wallet = app.create_wallet("EUR").await;
        // Seven entries per millisecond in every wallet: runs of 21 equal timestamps.
        seed_chain(&app, &wallet, per_wallet, |seq| {
            base + TimeDelta::milliseconds((seq - 1) / 7)
        })
        .await;
        wallets.push(wallet);
    }
    let body = export_jsonl(&app, &app.api_key, &everything()).await;
    let exported: Vec<(DateTime<Utc>, String, i64)> = body
        .lines()
        .map(|l| export_key(&serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(exported.len() as i64, 3 * per_wallet);
    let mut sorted = exported.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(exported, sorted, "in order, each entry once");
    for wallet in &wallets {
        let audit = app.get(&format!("/v1/wallets/{wallet}/audit")).await;
        let audit: Value = audit.json().await.unwrap();
        assert_eq!(audit["chain_ok"], true, "{audit}");
        assert_eq!(audit["entries"], per_wallet);
    }
    let csv = export_as(&app, &app.api_key, &format!("{}&format=csv", everything())).await;
    let records = parse_csv(&csv.text().await.unwrap());
    assert_eq!(records.len() as i64, 3 * per_wallet + 1);
}

/// How long `python3 scripts/verify_chain.py` may take.
const VERIFIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn verify_chain(path: &std::path::Path, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new("python3")
        .arg("scripts/verify_chain.py")
        .args(args)
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(VERIFIER_TIMEOUT, run)
        .await
        .expect("verify_chain.py finished in time")
        .unwrap()
}

/// The independent verifier (Python, stdlib only, no walletd code) recomputes every hash and
/// link of an export, metadata of every shape included, and fails on any tampered line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_independent_verifier_recomputes_the_chain_of_an_export() {
    let app = TestApp::spawn().await;
    let first = app.create_wallet("EUR").await;
    let second = app.create_wallet("EUR").await;
    let metadata = [
        json!({"nested": {"deeper": {"list": [1, 2.25, {"x": null}]}}, "flag": true}),
        json!({"é": "accent", "日本": "unicode key", "\u{e000}": "private use", "😀": "astral"}),
        json!({"rate": 1.5, "tiny": 0.000001, "big": 123456789012345_i64, "neg": -42.125}),
        json!({"zero": 0, "half": 0.5, "e": 0.00012, "text": "quote \" backslash \\ tab\t"}),
        json!({"mixed": [[], {}, "", 1e14, -0.000001]}),
    ];
    for (i, metadata) in metadata.iter().enumerate() {
        let wallet = if i % 2 == 0 { &first } else { &second };
        let body =
            json!({"amount": "10.00", "reference": format!("ref-{i}"), "metadata": metadata});
        entry(&app, wallet, "credit", body).await;
    }
    entry(
        &app,
        &first,
        "debit",
        json!({"amount": "3.25", "description": "Debit"}),
    )
    .await;
    let body = export_jsonl(&app, &app.api_key, &everything()).await;
    assert_eq!(body.lines().count(), 6);

    let dir = std::env::temp_dir().join(format!("walletd-verify-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("export.jsonl");
    std::fs::write(&export, &body).unwrap();
    let output = verify_chain(&export, &["--from-genesis"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("OK: 6 entries, 2 wallets, 0 mismatches"),
        "{stdout}"
    );

    // One amount changed in one line: that entry's hash no longer matches.
    let lines: Vec<&str> = body.lines().collect();
    let target: Value = serde_json::from_str(lines[2]).unwrap();
    let mut tampered = lines.clone();
    let changed = lines[2].replacen("\"amount\":\"10.00\"", "\"amount\":\"11.00\"", 1);
    assert_ne!(changed, lines[2]);
    tampered[2] = &changed;
    let tampered_file = dir.join("tampered.jsonl");
    std::fs::write(&tampered_file, tampered.join("\n") + "\n").unwrap();
    let output = verify_chain(&tampered_file, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISMATCH"), "{stdout}");
    assert!(
        stdout.contains(&format!("seq {}", target["seq"])),
        "names the entry: {stdout}"
    );

    // A line removed: the chain has a hole.
    let mut holed = lines.clone();
    let removed: Value = serde_json::from_str(holed.remove(2)).unwrap();
    let holed_file = dir.join("holed.jsonl");
    std::fs::write(&holed_file, holed.join("\n") + "\n").unwrap();
    let output = verify_chain(&holed_file, &["--from-genesis"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("seq {} is missing", removed["seq"])),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The database refuses the tampering the audit tests do, unless its triggers are off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_rows_cannot_be_changed_with_the_triggers_on() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let mut db: AsyncPgConnection = app.db().await;
    let refused = db
        .batch_execute(&format!(
            "UPDATE ledger_entries SET metadata = '{{\"x\": 1}}' WHERE wallet_id = '{wallet}'"
        ))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
}

/// POSTs `body` to `path` with a fresh key and asserts `status`; returns the body.
pub async fn post_ok(app: &TestApp, path: &str, body: Value, status: StatusCode) -> Value {
    let response = app.post(path, &new_key(), &body).await;
    assert_eq!(response.status(), status, "{path}");
    response.json().await.unwrap()
}

/// Every kind of entry — credit, debit, a capture (a debit naming its hold), reversals both
/// ways — audits clean, exports with `hold_id` and `reverses` filled in (CSV too), and the
/// independent verifier recomputes the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_and_reversals_audit_export_and_verify() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let credit = entry(&app, &wallet, "credit", json!({"amount": "100.00"})).await;
    let debit = entry(&app, &wallet, "debit", json!({"amount": "30.00"})).await;
    let hold = post_ok(
        &app,
        &format!("/v1/wallets/{wallet}/holds"),
        json!({"amount": "20.00", "currency": "EUR", "reference": "booking-9"}),
        StatusCode::CREATED,
    )
    .await;
    let hold_id = hold["id"].as_str().unwrap();
    let capture = post_ok(
        &app,
        &format!("/v1/holds/{hold_id}/capture"),
        json!({"amount": "15.00"}),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(capture["hold_id"], hold_id);
    let refund = post_ok(
        &app,
        &format!("/v1/transactions/{}/reverse", debit["id"].as_str().unwrap()),
        json!({"amount": "10.00", "reason": "partial refund"}),
        StatusCode::CREATED,
    )
    .await;
    let clawback = post_ok(
        &app,
        &format!(
            "/v1/transactions/{}/reverse",
            credit["id"].as_str().unwrap()
        ),
        json!({"amount": "5.00"}),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(refund["reverses"], debit["id"]);

    let report: Value = app
        .get(&format!("/v1/wallets/{wallet}/audit"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["chain_ok"], true, "{report}");
    assert_eq!(report["entries"], 5);
    // 100 - 30 - 15 + 10 - 5
    assert_eq!(report["ledger_sum"], "60.00");
    assert_eq!(report["balance"], "60.00");

    let body = export_jsonl(&app, &app.api_key, &everything()).await;
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [credit, debit, capture.clone(), refund.clone(), clawback]
    );
    let csv = export_as(&app, &app.api_key, &format!("{}&format=csv", everything())).await;
    let records = parse_csv(&csv.text().await.unwrap());
    let column = |name: &str| FIELDS.iter().position(|f| *f == name).unwrap();
    assert_eq!(records[3][column("hold_id")], hold_id);
    assert_eq!(records[3][column("reverses")], "");
    assert_eq!(records[4][column("type")], "reversal");
    assert_eq!(
        records[4][column("reverses")],
        refund["reverses"].as_str().unwrap()
    );
    assert_eq!(records[4][column("hold_id")], "");

    let dir = std::env::temp_dir().join(format!("walletd-verify-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("export.jsonl");
    std::fs::write(&export, &body).unwrap();
    let output = verify_chain(&export, &["--from-genesis"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
