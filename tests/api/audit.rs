//! `GET /v1/wallets/{id}/audit`, `walletd audit` and `GET /v1/wallets/{id}/balance?as_of=`
//! (API.md, Ledger integrity and audit), and the finance key's scopes.
//!
//! Tampering is done the only way the database allows it: inside one test transaction with
//! its triggers off (`SET LOCAL session_replication_role = replica`), which is what an
//! attacker with superuser access could do. The audit must name the first bad seq.

use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Duration as TimeDelta, Utc};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;
use walletd::auth::keys;
use walletd::db::models::LedgerEntryRow;
use walletd::domain::{Scope, TenantId};
use walletd::representation::Transaction;

use crate::export::{entry, export_as, export_jsonl, parse_time, post_ok, q, seed_chain};
use crate::helpers::{TestApp, assert_problem, new_key};

/// A timestamp as the API renders them: RFC 3339 UTC with microseconds.
fn is_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

async fn audit(app: &TestApp, wallet: &str) -> Value {
    let response = app.get(&format!("/v1/wallets/{wallet}/audit")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    response.json().await.unwrap()
}

/// Runs `sql` in one transaction with the database's triggers off (append-only, chain checks,
/// foreign keys): for this transaction only.
async fn tamper(app: &TestApp, sql: &str) {
    let mut db = app.db().await;
    db.transaction(async |c| {
        c.batch_execute("SET LOCAL session_replication_role = replica")
            .await?;
        c.batch_execute(sql).await
    })
    .await
    .unwrap();
}

/// A wallet with `count` entries through the API: a credit of 100.00, then debits of 10.00
/// with metadata.
async fn wallet_with_entries(app: &TestApp, count: usize) -> String {
    let wallet = app.create_wallet("EUR").await;
    entry(app, &wallet, "credit", json!({"amount": "100.00"})).await;
    for i in 1..count {
        let body = json!({"amount": "10.00", "metadata": {"i": i, "note": "ok"}});
        entry(app, &wallet, "debit", body).await;
    }
    wallet
}

/// A healthy wallet: every check passes, the ledger sums to the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_wallet_audits_clean() {
    let app = TestApp::spawn().await;
    let wallet = wallet_with_entries(&app, 4).await;
    let before = Utc::now();
    let report = audit(&app, &wallet).await;
    let fields: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "wallet_id",
        "entries",
        "balance",
        "ledger_sum",
        "chain_ok",
        "first_bad_seq",
        "checked_at",
    ];
    expected.sort_unstable();
    let mut fields = fields;
    fields.sort_unstable();
    assert_eq!(fields, expected);
    assert_eq!(report["wallet_id"], wallet.as_str());
    assert_eq!(report["entries"], 4);
    assert_eq!(report["balance"], "70.00");
    assert_eq!(report["ledger_sum"], "70.00");
    assert_eq!(report["chain_ok"], true);
    assert_eq!(report["first_bad_seq"], Value::Null);
    let checked_at = report["checked_at"].as_str().unwrap();
    assert!(is_timestamp(checked_at), "{checked_at}");
    assert!(parse_time(checked_at) >= before - TimeDelta::seconds(1));

    // A wallet without entries, in a currency without minor units.
    let empty = app.create_wallet("JPY").await;
    let report = audit(&app, &empty).await;
    assert_eq!(
        (
            &report["entries"],
            &report["balance"],
            &report["ledger_sum"]
        ),
        (&json!(0), &json!("0"), &json!("0"))
    );
    assert_eq!(report["chain_ok"], true);
}

/// Another tenant's wallet, an unknown id and a non-UUID all answer 404 wallet_not_found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_foreign_wallets_are_not_found() {
    let app = TestApp::spawn().await;
    let wallet = wallet_with_entries(&app, 1).await;
    let (_, other) = app.new_tenant(&Scope::ALL).await;
    for (key, id) in [
        (other.as_str(), wallet.clone()),
        (app.api_key.as_str(), Uuid::now_v7().to_string()),
        (app.api_key.as_str(), "not-a-uuid".to_owned()),
    ] {
        let response = app.get_as(key, &format!("/v1/wallets/{id}/audit")).await;
        assert_problem(response, 404, "wallet_not_found").await;
        let response = app
            .get_as(
                key,
                &format!("/v1/wallets/{id}/balance?as_of={}", q(Utc::now())),
            )
            .await;
        assert_problem(response, 404, "wallet_not_found").await;
    }
}

/// Tampering found at the first bad seq: a changed amount (arithmetic kept consistent, so only
/// the hash can tell), changed metadata, a broken prev_hash link, an entry re-sealed with a
/// valid hash of its own (the next link breaks), a deleted entry (a gap), and a deleted tail.
/// Another wallet of the same tenant stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_found_at_the_first_bad_seq() {
    let app = TestApp::spawn().await;
    let clean = wallet_with_entries(&app, 5).await;
    let mut cases = Vec::new();

    // seq 3 is a debit of 10.00: make it 11.00 and its balance_after one lower, so the row's
    // own arithmetic still holds (and its CHECK constraint passes).
    let amount = wallet_with_entries(&app, 5).await;
    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET amount = amount + 1, balance_after = balance_after - 1 \
             WHERE wallet_id = '{amount}' AND seq = 3"
        ),
    )
    .await;
    cases.push((amount, 3));

    let metadata = wallet_with_entries(&app, 5).await;
    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET metadata = '{{\"i\": 3, \"note\": \"changed\"}}' \
             WHERE wallet_id = '{metadata}' AND seq = 4"
        ),
    )
    .await;
    cases.push((metadata, 4));

    let link = wallet_with_entries(&app, 5).await;
    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET prev_hash = repeat('a', 64) \
             WHERE wallet_id = '{link}' AND seq = 2"
        ),
    )
    .await;
    cases.push((link, 2));

    // Re-sealed: seq 2 changed and given the hash its new content has; seq 3 then links to a
    // hash that is no longer there.
    let resealed = wallet_with_entries(&app, 5).await;
    let mut row = entry_row(&app, &resealed, 2).await;
    row.description = Some("rewritten".into());
    let new_hash = Transaction::sealed(&row, row.prev_hash.as_deref().unwrap())
        .unwrap()
        .hash;
    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET description = 'rewritten', hash = '{new_hash}' \
             WHERE wallet_id = '{resealed}' AND seq = 2"
        ),
    )
    .await;
    cases.push((resealed, 3));

    let gap = wallet_with_entries(&app, 5).await;
    tamper(
        &app,
        &format!("DELETE FROM ledger_entries WHERE wallet_id = '{gap}' AND seq = 2"),
    )
    .await;
    cases.push((gap, 2));

    let tail = wallet_with_entries(&app, 5).await;
    tamper(
        &app,
        &format!("DELETE FROM ledger_entries WHERE wallet_id = '{tail}' AND seq = 5"),
    )
    .await;
    cases.push((tail, 5));

    for (wallet, bad_seq) in &cases {
        let report = audit(&app, wallet).await;
        assert_eq!(report["chain_ok"], false, "{report}");
        assert_eq!(report["first_bad_seq"], *bad_seq, "{report}");
    }
    // The changed amount also shows in the sum: 100 - 10 - 11 - 10 - 10.
    let amount_report = audit(&app, &cases[0].0).await;
    assert_eq!(amount_report["ledger_sum"], "59.00");
    assert_eq!(amount_report["balance"], "60.00");

    let report = audit(&app, &clean).await;
    assert_eq!(report["chain_ok"], true, "{report}");
    assert_eq!(report["first_bad_seq"], Value::Null);
}

/// A wallet audited over several pages (more than one query of entries): clean when seeded
/// validly, and one changed row deep inside is found at its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ledger_is_audited_page_by_page() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let base = Utc::now() - TimeDelta::hours(2);
    seed_chain(&app, &wallet, 2_345, |seq| {
        base + TimeDelta::milliseconds(seq)
    })
    .await;
    let report = audit(&app, &wallet).await;
    assert_eq!(report["chain_ok"], true, "{report}");
    assert_eq!(report["entries"], 2_345);
    assert_eq!(report["balance"], report["ledger_sum"]);
    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET reference = 'changed' \
             WHERE wallet_id = '{wallet}' AND seq = 1777"
        ),
    )
    .await;
    let report = audit(&app, &wallet).await;
    assert_eq!(report["first_bad_seq"], 1_777, "{report}");
}

async fn entry_row(app: &TestApp, wallet: &str, seq: i64) -> LedgerEntryRow {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use walletd::db::schema::ledger_entries;
    ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(Uuid::parse_str(wallet).unwrap()))
        .filter(ledger_entries::seq.eq(seq))
        .select(LedgerEntryRow::as_select())
        .first(&mut app.db().await)
        .await
        .unwrap()
}

/// Runs `walletd <args>` from the crate root against `database_url`, bounded to 60 s.
async fn walletd(database_url: &str, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", database_url)
        .env_remove("WALLETD_ENV")
        .env_remove("WALLETD_CONFIG_DIR")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("walletd {args:?} did not finish within 60 s"))
        .unwrap()
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `walletd audit`: silent but for the summary on a sound database (exit 0); with one tampered
/// wallet it prints that wallet (and only it) with the first bad seq, then the summary, and
/// exits non-zero. `--wallet` and `--tenant` narrow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_audit_names_the_bad_wallet_and_fails() {
    let app = TestApp::spawn().await;
    let good = wallet_with_entries(&app, 3).await;
    let bad = wallet_with_entries(&app, 4).await;
    let (other_tenant, other_key) = app.new_tenant(&Scope::ALL).await;
    let other_wallet = app
        .post_as(
            &other_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    assert_eq!(other_wallet.status(), StatusCode::CREATED);

    let output = walletd(&app.database_url, &["audit"]).await;
    assert!(output.status.success(), "{output:?}");
    let lines = stdout_lines(&output);
    assert_eq!(
        lines,
        [json!({"wallets": 3, "bad_wallets": 0, "entries": 7, "ok": true})]
    );

    tamper(
        &app,
        &format!(
            "UPDATE ledger_entries SET metadata = '{{}}' WHERE wallet_id = '{bad}' AND seq = 2"
        ),
    )
    .await;
    let output = walletd(&app.database_url, &["audit"]).await;
    assert!(!output.status.success(), "{output:?}");
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["wallet_id"], bad.as_str());
    assert_eq!(line["tenant_id"], app.tenant_id.as_str());
    assert_eq!(line["chain_ok"], false);
    assert_eq!(line["first_bad_seq"], 2);
    assert!(
        line["problem"].as_str().unwrap().contains("seq 2"),
        "{line}"
    );
    assert_eq!(
        lines[1],
        json!({"wallets": 3, "bad_wallets": 1, "entries": 7, "ok": false})
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 3 wallets failed the audit"));

    let output = walletd(&app.database_url, &["audit", "--wallet", &good]).await;
    assert!(output.status.success(), "{output:?}");
    let output = walletd(&app.database_url, &["audit", "--wallet", &bad]).await;
    assert!(!output.status.success());
    assert_eq!(stdout_lines(&output)[0]["wallet_id"], bad.as_str());
    let output = walletd(&app.database_url, &["audit", "--tenant", &app.tenant_id]).await;
    assert!(!output.status.success());
    assert_eq!(stdout_lines(&output).len(), 2);
    // Another tenant's wallets only: nothing wrong there.
    let output = walletd(&app.database_url, &["audit", "--tenant", &other_tenant]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_lines(&output)[0]["wallets"], 1);
    // A wallet that is not the tenant's, or does not exist: an error.
    let output = walletd(
        &app.database_url,
        &["audit", "--tenant", &other_tenant, "--wallet", &good],
    )
    .await;
    assert!(!output.status.success());
    assert!(stdout_lines(&output).is_empty());
    let output = walletd(&app.database_url, &["audit", "--wallet", "not-a-uuid"]).await;
    assert!(!output.status.success());
}

async fn balance_at(app: &TestApp, wallet: &str, as_of: &str) -> Value {
    let response = app
        .get(&format!("/v1/wallets/{wallet}/balance?as_of={as_of}"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The balance after the last entry created at or before `as_of`: 0 and seq 0 before the
/// first entry, each entry's balance_after from its own instant on, the newest after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_as_of_before_between_and_after_entries() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    for (kind, amount) in [("credit", "10.00"), ("debit", "3.00"), ("credit", "5.50")] {
        let t = entry(&app, &wallet, kind, json!({"amount": amount})).await;
        times.push(parse_time(t["created_at"].as_str().unwrap()));
    }
    let micro = TimeDelta::microseconds(1);
    let cases = [
        (times[0] - TimeDelta::days(365), "0.00", 0),
        (times[0] - micro, "0.00", 0),
        (times[0], "10.00", 1),
        (times[1] - micro, "10.00", 1),
        (times[1], "7.00", 2),
        (times[2] - micro, "7.00", 2),
        (times[2], "12.50", 3),
        (times[2] + TimeDelta::days(365), "12.50", 3),
    ];
    for (as_of, balance, seq) in cases {
        let body = balance_at(&app, &wallet, &q(as_of)).await;
        assert_eq!(
            body,
            json!({
                "wallet_id": wallet,
                "as_of": walletd::representation::render_timestamp(as_of),
                "balance": balance,
                "seq": seq,
            }),
            "as_of {as_of}"
        );
    }
    // The same instant with an offset, and with a finer fraction (rounded down).
    let paris = (times[1] + TimeDelta::hours(1))
        .format("%Y-%m-%dT%H:%M:%S%.6f%%2B01:00")
        .to_string();
    assert_eq!(balance_at(&app, &wallet, &paris).await["seq"], 2);
    let finer = format!("{}9Z", q(times[1] - micro).trim_end_matches('Z'));
    let body = balance_at(&app, &wallet, &finer).await;
    assert_eq!(
        (body["seq"].as_i64(), body["balance"].as_str()),
        (Some(1), Some("10.00"))
    );
    assert_eq!(
        body["as_of"],
        walletd::representation::render_timestamp(times[1] - micro)
    );

    // No minor units: "0".
    let yen = app.create_wallet("JPY").await;
    let body = balance_at(&app, &yen, &q(Utc::now())).await;
    assert_eq!(
        (body["balance"].as_str(), body["seq"].as_i64()),
        (Some("0"), Some(0))
    );

    for junk in [
        "junk",
        "",
        "2026-12-01",
        "2026-12-01T00:00:00",
        "2026-12-01%2000:00:00Z",
        "2026-12-01T00:00:00+01:00",
        "2026-02-30T00:00:00Z",
        "1764547200",
    ] {
        let response = app
            .get(&format!("/v1/wallets/{wallet}/balance?as_of={junk}"))
            .await;
        assert_problem(response, 400, "validation_failed").await;
    }
    let response = app.get(&format!("/v1/wallets/{wallet}/balance")).await;
    assert_problem(response, 400, "validation_failed").await;
}

/// A finance key (ledger:read + wallets:read) of the tenant audits, exports and reads, and
/// gets 403 forbidden on every write route (wallets, debit, credit, holds, capture, void,
/// reverse), which then change nothing. A key without
/// ledger:read cannot audit or export; one without wallets:read cannot read a balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finance_key_reads_and_audits_but_never_writes() {
    let app = TestApp::spawn().await;
    let wallet = wallet_with_entries(&app, 2).await;
    let tenant = TenantId::parse(&app.tenant_id).unwrap();
    let mut db = app.db().await;
    let finance = keys::create_key(&mut db, tenant, &[Scope::LedgerRead, Scope::WalletsRead])
        .await
        .unwrap()
        .api_key;
    let writer = keys::create_key(&mut db, tenant, &[Scope::WalletsWrite, Scope::WalletsRead])
        .await
        .unwrap()
        .api_key;
    let auditor = keys::create_key(&mut db, tenant, &[Scope::LedgerRead])
        .await
        .unwrap()
        .api_key;

    let response = app
        .get_as(&finance, &format!("/v1/wallets/{wallet}/audit"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let window = format!(
        "from={}&to={}",
        q(Utc::now() - TimeDelta::hours(1)),
        q(Utc::now() + TimeDelta::hours(1))
    );
    assert_eq!(
        export_jsonl(&app, &finance, &window).await.lines().count(),
        2
    );
    let response = export_as(&app, &finance, &format!("{window}&format=csv")).await;
    assert_eq!(response.status(), StatusCode::OK);
    for path in [
        format!("/v1/wallets/{wallet}"),
        format!("/v1/wallets/{wallet}/ledger"),
        format!("/v1/wallets/{wallet}/balance?as_of={}", q(Utc::now())),
    ] {
        assert_eq!(
            app.get_as(&finance, &path).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }

    // A hold and an entry to try the hold and reversal routes on.
    let hold = post_ok(
        &app,
        &format!("/v1/wallets/{wallet}/holds"),
        json!({"amount": "5.00", "currency": "EUR"}),
        StatusCode::CREATED,
    )
    .await;
    let hold = hold["id"].as_str().unwrap().to_owned();
    let entry_id = app.ledger(&wallet).await[1]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let before = app.wallet(&wallet).await;
    let body = json!({"amount": "1.00", "currency": "EUR"});
    for (path, body) in [
        ("/v1/wallets".to_owned(), json!({"currency": "EUR"})),
        (format!("/v1/wallets/{wallet}/debit"), body.clone()),
        (format!("/v1/wallets/{wallet}/credit"), body.clone()),
        (format!("/v1/wallets/{wallet}/holds"), body.clone()),
        (format!("/v1/holds/{hold}/capture"), json!({})),
        (format!("/v1/holds/{hold}/void"), json!({})),
        (format!("/v1/transactions/{entry_id}/reverse"), json!({})),
    ] {
        let response = app.post_as(&finance, &path, &new_key(), &body).await;
        assert_problem(response, 403, "forbidden").await;
    }
    assert_eq!(app.wallet(&wallet).await, before, "nothing changed");
    assert_eq!(app.ledger(&wallet).await.len(), 2);

    // Writers cannot audit or export; a ledger:read-only key cannot read balances.
    let response = app
        .get_as(&writer, &format!("/v1/wallets/{wallet}/audit"))
        .await;
    assert_problem(response, 403, "forbidden").await;
    let response = export_as(&app, &writer, &format!("{window}&format=jsonl")).await;
    assert_problem(response, 403, "forbidden").await;
    let response = app
        .get_as(
            &auditor,
            &format!("/v1/wallets/{wallet}/balance?as_of={}", q(Utc::now())),
        )
        .await;
    assert_problem(response, 403, "forbidden").await;
    let response = app
        .get_as(&auditor, &format!("/v1/wallets/{wallet}/audit"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}
