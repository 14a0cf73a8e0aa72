//! The database itself enforces the ledger invariants, whatever SQL reaches it: these tests
//! bypass the service and write to Postgres directly.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{TestApp, new_key};

/// A wallet with two entries: credit 100.00 (seq 1), then debit 30.00 with key `debit_key`
/// (seq 2), so balance 70.00 and last_seq 2.
struct Fixture {
    app: TestApp,
    wallet: String,
    debit_key: String,
}

async fn fixture() -> Fixture {
    // These tests write in SQL behind the service, which its balance cache cannot see.
    let app = TestApp::spawn_with(|s| s.cache.enabled = false).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit_key = new_key();
    let response = app.debit(&wallet, &debit_key, "30.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    Fixture {
        app,
        wallet,
        debit_key,
    }
}

/// Every row of the tables the invariants span, as one text, to prove a refused statement
/// left no trace.
async fn snapshot(conn: &mut AsyncPgConnection) -> String {
    #[derive(diesel::QueryableByName)]
    struct Snapshot {
        #[diesel(sql_type = diesel::sql_types::Text)]
        snapshot: String,
    }
    diesel::sql_query(
        "SELECT concat_ws(' | ', \
            (SELECT json_agg(w ORDER BY id)::text FROM wallets w), \
            (SELECT json_agg(l ORDER BY wallet_id, seq)::text FROM ledger_entries l), \
            (SELECT json_agg(k ORDER BY tenant_id, idempotency_key)::text FROM idempotency_keys k) \
         ) AS snapshot",
    )
    .get_result::<Snapshot>(conn)
    .await
    .unwrap()
    .snapshot
}

/// Runs `statements` in one transaction (rolled back on the first error; the commit runs the
/// deferred triggers).
async fn in_transaction(
    conn: &mut AsyncPgConnection,
    statements: &[String],
) -> Result<(), DieselError> {
    conn.transaction(async |c| {
        for statement in statements {
            c.batch_execute(statement).await?;
        }
        Ok::<_, DieselError>(())
    })
    .await
}

/// Asserts a database error of `kind` whose message contains `message`, naming `constraint`
/// when one is given.
#[track_caller]
fn assert_refused(
    result: Result<(), DieselError>,
    kind: DatabaseErrorKind,
    message: &str,
    constraint: Option<&str>,
) {
    match result {
        Err(DieselError::DatabaseError(actual_kind, info)) => {
            assert_eq!(
                format!("{actual_kind:?}"),
                format!("{kind:?}"),
                "wrong kind of error: {}",
                info.message()
            );
            assert!(
                info.message().contains(message),
                "expected {message:?} in {:?}",
                info.message()
            );
            if let Some(constraint) = constraint {
                assert_eq!(
                    info.constraint_name(),
                    Some(constraint),
                    "{}",
                    info.message()
                );
            }
        }
        other => panic!("expected a {kind:?} ({message}), got {other:?}"),
    }
}

/// A stored idempotency row naming `wallet`, which a hand-written ledger entry's deferred key
/// check needs.
fn idempotency_row(tenant: &str, key: &str, wallet: &str) -> String {
    format!(
        "INSERT INTO idempotency_keys \
             (result_id, tenant_id, idempotency_key, fingerprint, wallet_id, state, \
              response_status, response_body, created_at, completed_at) \
         VALUES (walletd_result_id('{tenant}', '{key}'), '{tenant}', '{key}', \
                 decode(repeat('ab', 32), 'hex'), '{wallet}', 'completed', 201, '\\x7b7d', \
                 now(), now())"
    )
}

/// Moves the wallet row the way the service does before appending an entry (with the event
/// that every new version needs).
fn move_wallet(wallet: &str, balance: &str, last_seq: i64) -> String {
    format!(
        "UPDATE wallets SET balance = {balance}, last_seq = {last_seq}, version = version + 1 \
         WHERE id = '{wallet}'; \
         INSERT INTO outbox_events (wallet_id, wallet_version, event_id, tenant_id, event_type, \
                                    payload, occurred_at) \
         SELECT id, version, gen_random_uuid(), tenant_id, 'wallet.debited', '{{}}', now() \
           FROM wallets WHERE id = '{wallet}'"
    )
}

#[allow(clippy::too_many_arguments)]
fn entry(
    wallet: &str,
    tenant: &str,
    seq: i64,
    kind: &str,
    amount: &str,
    before: &str,
    after: &str,
    key: &str,
) -> String {
    // Linked onto the previous entry's hash (as the service does), so that the refusal a test
    // expects is the one it gets; the hash itself is any well-formed value.
    let id = Uuid::now_v7();
    format!(
        "UPDATE wallets SET last_hash = encode(sha256('{id}'::bytea), 'hex') WHERE id = '{wallet}'; \
         INSERT INTO ledger_entries \
             (wallet_id, seq, id, tenant_id, entry_type, amount, currency, balance_before, \
              balance_after, idempotency_key, prev_hash, hash, created_at) \
         VALUES ('{wallet}', {seq}, '{id}', '{tenant}', '{kind}', {amount}, 'EUR', {before}, \
                 {after}, '{key}', \
                 coalesce((SELECT hash FROM ledger_entries \
                           WHERE wallet_id = '{wallet}' AND seq = {seq} - 1), repeat('0', 64)), \
                 encode(sha256('{id}'::bytea), 'hex'), now())"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_rows_cannot_be_updated_deleted_or_truncated() {
    let Fixture { app, wallet, .. } = fixture().await;
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;

    for statement in [
        format!("UPDATE ledger_entries SET amount = 1000 WHERE wallet_id = '{wallet}' AND seq = 2"),
        // Even a change of a free-text column, and even a no-op rewrite.
        format!("UPDATE ledger_entries SET description = 'edited' WHERE wallet_id = '{wallet}'"),
        format!("UPDATE ledger_entries SET seq = seq WHERE wallet_id = '{wallet}'"),
    ] {
        assert_refused(
            conn.batch_execute(&statement).await,
            DatabaseErrorKind::RestrictViolation,
            "ledger_entries is append-only: UPDATE refused",
            None,
        );
    }
    assert_refused(
        conn.batch_execute(&format!(
            "DELETE FROM ledger_entries WHERE wallet_id = '{wallet}' AND seq = 2"
        ))
        .await,
        DatabaseErrorKind::RestrictViolation,
        "ledger_entries is append-only: DELETE refused",
        None,
    );
    assert_refused(
        conn.batch_execute("DELETE FROM ledger_entries").await,
        DatabaseErrorKind::RestrictViolation,
        "ledger_entries is append-only: DELETE refused",
        None,
    );
    assert_refused(
        conn.batch_execute("TRUNCATE ledger_entries").await,
        DatabaseErrorKind::RestrictViolation,
        "ledger_entries is append-only: TRUNCATE refused",
        None,
    );
    // Nor inside a transaction that also does legitimate work.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                format!("UPDATE wallets SET owner_ref = 'x' WHERE id = '{wallet}'"),
                format!("DELETE FROM ledger_entries WHERE wallet_id = '{wallet}'"),
            ],
        )
        .await,
        DatabaseErrorKind::RestrictViolation,
        "DELETE refused",
        None,
    );

    assert_eq!(snapshot(&mut conn).await, before);
    assert_eq!(app.assert_invariants(&wallet).await.len(), 2);
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
}

/// The chain trigger and the arithmetic CHECK refuse badly formed entries, each for its own
/// reason; a correctly formed hand-written entry (the control) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_must_continue_the_chain_with_correct_arithmetic() {
    let Fixture { app, wallet, .. } = fixture().await;
    let tenant = app.tenant_id.clone();
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;

    // seq 4 after seq 2: a gap (the wallet row is moved consistently, so only the gap is wrong).
    let key = new_key();
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "60", 4),
                entry(&wallet, &tenant, 4, "debit", "10", "70", "60", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "ledger gap",
        None,
    );
    // seq 2 again, chained onto seq 1: a second entry at one position of the chain.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "90", 2),
                entry(&wallet, &tenant, 2, "debit", "10", "100", "90", &key),
            ],
        )
        .await,
        DatabaseErrorKind::UniqueViolation,
        "ledger_entries_pkey",
        Some("ledger_entries_pkey"),
    );
    // balance_before 69 where the previous entry ended at 70.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "59", 3),
                entry(&wallet, &tenant, 3, "debit", "10", "69", "59", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "ledger chain broken",
        None,
    );
    // The first entry of a wallet must start from 0.
    let other = app.create_wallet("EUR").await;
    let before_other = snapshot(&mut conn).await;
    let other_key = new_key();
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &other_key, &other),
                move_wallet(&other, "15", 1),
                entry(&other, &tenant, 1, "credit", "10", "5", "15", &other_key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "ledger chain broken",
        None,
    );
    // Chained correctly, but 70 - 5 is not 60.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "60", 3),
                entry(&wallet, &tenant, 3, "debit", "5", "70", "60", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "ledger_entries_arithmetic",
        Some("ledger_entries_arithmetic"),
    );
    // A credit whose sign is wrong: 70 + 10 is not 60.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "60", 3),
                entry(&wallet, &tenant, 3, "credit", "10", "70", "60", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "ledger_entries_arithmetic",
        Some("ledger_entries_arithmetic"),
    );
    // A correct entry that the wallet row does not reflect.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                entry(&wallet, &tenant, 3, "debit", "10", "70", "60", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "does not match wallet",
        None,
    );
    assert_eq!(snapshot(&mut conn).await, before_other);
    assert_ne!(before_other, before, "only the new wallet differs");

    // Control: the same entry, well formed and with the wallet moved, is accepted.
    in_transaction(
        &mut conn,
        &[
            idempotency_row(&tenant, &key, &wallet),
            move_wallet(&wallet, "60", 3),
            entry(&wallet, &tenant, 3, "debit", "10", "70", "60", &key),
        ],
    )
    .await
    .unwrap();
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "60.00");
    assert_eq!(app.assert_invariants(&wallet).await.len(), 3);
}

/// A wallet's balance (or last_seq) cannot move without a ledger entry backing it: the
/// statement itself runs, the deferred check refuses the COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_change_without_a_ledger_entry_fails_at_commit() {
    let Fixture { app, wallet, .. } = fixture().await;
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;

    for change in [
        "balance = balance + 1000",
        "balance = balance - 1",
        "last_seq = last_seq + 1",
        "balance = 60, last_seq = 3",
    ] {
        conn.batch_execute("BEGIN").await.unwrap();
        conn.batch_execute(&format!(
            "UPDATE wallets SET {change} WHERE id = '{wallet}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("the UPDATE itself ({change}) is allowed: {e}"));
        assert_refused(
            conn.batch_execute("COMMIT").await,
            DatabaseErrorKind::CheckViolation,
            "is not backed by its newest ledger entry",
            None,
        );
        assert_eq!(snapshot(&mut conn).await, before, "after {change}");
    }
    // The same through a diesel transaction, and with SET CONSTRAINTS ALL IMMEDIATE the
    // statement itself is refused.
    assert_refused(
        in_transaction(
            &mut conn,
            &[format!(
                "UPDATE wallets SET balance = 1000000 WHERE id = '{wallet}'"
            )],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "is not backed by its newest ledger entry",
        None,
    );
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                "SET CONSTRAINTS ALL IMMEDIATE".to_owned(),
                format!("UPDATE wallets SET balance = 1000000 WHERE id = '{wallet}'"),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "is not backed by its newest ledger entry",
        None,
    );
    // A new wallet cannot be born with money.
    assert_refused(
        conn.batch_execute(&format!(
            "INSERT INTO wallets (id, tenant_id, currency, balance, created_at, updated_at) \
             VALUES ('{}', '{}', 'EUR', 50, now(), now())",
            Uuid::now_v7(),
            app.tenant_id
        ))
        .await,
        DatabaseErrorKind::CheckViolation,
        "is not backed by its newest ledger entry (seq 0",
        None,
    );

    assert_eq!(snapshot(&mut conn).await, before);
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
    app.assert_invariants(&wallet).await;
}

/// `balance - held + overdraft_limit >= 0` is a CHECK on the wallet row: a direct UPDATE that
/// breaks it is refused at once, even inside an otherwise well-formed ledger transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_available_floor_check_refuses_a_direct_update() {
    let Fixture { app, wallet, .. } = fixture().await;
    let tenant = app.tenant_id.clone();
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;
    let floor = Some("wallets_available_not_negative");

    for change in [
        "held = 70.0001",
        "balance = -0.01",
        "balance = -5, overdraft_limit = 4.99",
    ] {
        assert_refused(
            conn.batch_execute(&format!(
                "UPDATE wallets SET {change} WHERE id = '{wallet}'"
            ))
            .await,
            DatabaseErrorKind::CheckViolation,
            "wallets_available_not_negative",
            floor,
        );
    }
    assert_eq!(snapshot(&mut conn).await, before);
    // A debit of 70.01 written by hand, perfectly chained: the floor still refuses it.
    let key = new_key();
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &key, &wallet),
                move_wallet(&wallet, "-0.01", 3),
                entry(&wallet, &tenant, 3, "debit", "70.01", "70", "-0.01", &key),
            ],
        )
        .await,
        DatabaseErrorKind::CheckViolation,
        "wallets_available_not_negative",
        floor,
    );

    // An overdrawn wallet cannot have its overdraft limit cut below its debt.
    let overdrawn = app
        .create_wallet_with(serde_json::json!({"currency": "EUR", "overdraft_limit": "50.00"}))
        .await;
    assert_eq!(
        app.debit(&overdrawn, &new_key(), "20.00").await.status(),
        StatusCode::CREATED
    );
    let before = snapshot(&mut conn).await;
    assert_refused(
        conn.batch_execute(&format!(
            "UPDATE wallets SET overdraft_limit = 19.99 WHERE id = '{overdrawn}'"
        ))
        .await,
        DatabaseErrorKind::CheckViolation,
        "wallets_available_not_negative",
        floor,
    );
    assert_refused(
        conn.batch_execute(&format!(
            "UPDATE wallets SET held = 30.01 WHERE id = '{overdrawn}'"
        ))
        .await,
        DatabaseErrorKind::CheckViolation,
        "wallets_available_not_negative",
        floor,
    );
    // Exactly at the floor is allowed (control), then undone.
    in_transaction(
        &mut conn,
        &[
            format!("UPDATE wallets SET overdraft_limit = 20 WHERE id = '{overdrawn}'"),
            format!("UPDATE wallets SET overdraft_limit = 50 WHERE id = '{overdrawn}'"),
        ],
    )
    .await
    .unwrap();

    assert_eq!(snapshot(&mut conn).await, before);
    assert_eq!(app.wallet(&wallet).await["available"], "70.00");
    assert_eq!(app.wallet(&overdrawn).await["available"], "30.00");
    app.assert_invariants(&wallet).await;
    app.assert_invariants(&overdrawn).await;
}

/// Exactly one ledger entry per (tenant, idempotency key), enforced by the schema: a second
/// entry with a used key is refused on the same wallet (unique key), on another wallet of the
/// tenant (the key's row names the first wallet), and a second key row cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ledger_entry_for_an_idempotency_key_is_impossible() {
    let Fixture {
        app,
        wallet,
        debit_key,
    } = fixture().await;
    let tenant = app.tenant_id.clone();
    let second = app.create_wallet("EUR").await;
    app.fund(&second, "50.00").await;
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;

    // Same wallet, correctly chained, reusing the debit's key.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                move_wallet(&wallet, "60", 3),
                entry(&wallet, &tenant, 3, "debit", "10", "70", "60", &debit_key),
            ],
        )
        .await,
        DatabaseErrorKind::UniqueViolation,
        "ledger_entries_one_per_key",
        Some("ledger_entries_one_per_key"),
    );
    // Another wallet of the same tenant, correctly chained, reusing the key.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                move_wallet(&second, "40", 2),
                entry(&second, &tenant, 2, "debit", "10", "50", "40", &debit_key),
            ],
        )
        .await,
        DatabaseErrorKind::ForeignKeyViolation,
        "has no idempotency key",
        None,
    );
    // ...even after trying to point a second key row at the other wallet.
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                idempotency_row(&tenant, &debit_key, &second),
                move_wallet(&second, "40", 2),
                entry(&second, &tenant, 2, "debit", "10", "50", "40", &debit_key),
            ],
        )
        .await,
        DatabaseErrorKind::UniqueViolation,
        "idempotency_keys_pkey",
        Some("idempotency_keys_pkey"),
    );
    // ...or by re-pointing the existing key row (refused by the only-forward trigger, and
    // behind it by the first entry's deferred key check).
    assert_refused(
        conn.batch_execute(&format!(
            "UPDATE idempotency_keys SET wallet_id = '{second}' \
             WHERE tenant_id = '{tenant}' AND idempotency_key = '{debit_key}'"
        ))
        .await,
        DatabaseErrorKind::RestrictViolation,
        "only its state, body and expiry change",
        None,
    );
    // An entry whose key has no row at all.
    let unclaimed = new_key();
    assert_refused(
        in_transaction(
            &mut conn,
            &[
                move_wallet(&second, "40", 2),
                entry(&second, &tenant, 2, "debit", "10", "50", "40", &unclaimed),
            ],
        )
        .await,
        DatabaseErrorKind::ForeignKeyViolation,
        "has no idempotency key",
        None,
    );

    assert_eq!(snapshot(&mut conn).await, before);
    let ledger = app.assert_invariants(&wallet).await;
    assert_eq!(
        ledger
            .iter()
            .filter(|e| e["idempotency_key"] == debit_key.as_str())
            .count(),
        1
    );
    assert_eq!(app.assert_invariants(&second).await.len(), 1);
    // And through the API the key still replays its one answer.
    let replay = app.debit(&wallet, &debit_key, "30.00").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
}

/// A wallet row cannot be moved back to an older point of its chain behind the ledger's back:
/// afterwards its balance would no longer be the sum of its ledger (and the next debit would
/// collide with an existing seq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_cannot_be_rewound_to_an_older_entry() {
    let Fixture { app, wallet, .. } = fixture().await;
    let mut conn = app.db().await;
    let before = snapshot(&mut conn).await;

    let mut committed = Vec::new();
    for (change, why) in [
        ("balance = 100, last_seq = 1", "entry 1 is not the newest"),
        ("balance = 0, last_seq = 0", "the wallet has entries"),
    ] {
        let result = conn
            .batch_execute(&format!(
                "UPDATE wallets SET {change} WHERE id = '{wallet}'"
            ))
            .await;
        if result.is_ok() {
            committed.push(format!(
                "UPDATE wallets SET {change} committed ({why}): the wallet read balance {} \
                 while its ledger sums to 70.00",
                app.wallet(&wallet).await["balance"]
            ));
            // Put the row back where its newest entry says it is.
            conn.batch_execute(&format!(
                "UPDATE wallets SET balance = 70, last_seq = 2 WHERE id = '{wallet}'"
            ))
            .await
            .unwrap();
        } else {
            assert_refused(result, DatabaseErrorKind::CheckViolation, "ledger", None);
        }
        assert_eq!(snapshot(&mut conn).await, before, "after {change}");
    }
    app.assert_invariants(&wallet).await;
    assert!(committed.is_empty(), "{committed:#?}");
}
