//! Reversals over HTTP (API.md Part 2, Reversals) and the hash chain across every kind of
//! entry, against real Postgres and Redis. Each test names the guard it proves.

use std::collections::HashMap;

use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use walletd::domain::Scope;

use crate::helpers::{TestApp, assert_problem, count_answers, dec, new_key};
use crate::holds::{
    Answer, TRANSACTION_FIELDS, TwoProcesses, assert_members, assert_replays, capture, id_of,
    place_ok, post_raw, race_on_row, version,
};

async fn reverse(app: &TestApp, transaction: &str, key: &str, body: &Value) -> Response {
    app.post(
        &format!("/v1/transactions/{transaction}/reverse"),
        key,
        body,
    )
    .await
}

/// Reverses and asserts 201; returns the reversal entry.
async fn reverse_ok(app: &TestApp, transaction: &str, body: &Value) -> Value {
    let response = reverse(app, transaction, &new_key(), body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// Posts a debit or credit of `amount` EUR and asserts 201; returns the entry.
async fn entry(app: &TestApp, wallet: &str, kind: &str, amount: &str) -> Value {
    let response = app
        .post(
            &format!("/v1/wallets/{wallet}/{kind}"),
            &new_key(),
            &json!({"amount": amount, "currency": "EUR", "reference": "booking-1",
                    "description": "the original", "metadata": {"n": 1}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// The exact bytes of GET /v1/transactions/{id}.
async fn transaction_bytes(app: &TestApp, id: &str) -> Vec<u8> {
    let response = app.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().to_vec()
}

/// Sum of the reversals of `original` in a ledger.
fn reversed_total(entries: &[Value], original: &str) -> Decimal {
    entries
        .iter()
        .filter(|e| e["reverses"] == original)
        .map(|e| dec(&e["amount"]))
        .sum()
}

/// Guard: `reverse` for a debit — a new `reversal` entry that credits the wallet
/// (`Direction::In`), linked by `reverses`, with the reason as its description; the original
/// entry reads back byte for byte as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reversal_of_a_debit_credits_it_back() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit = entry(&app, &wallet, "debit", "30.00").await;
    let original = transaction_bytes(&app, &id_of(&debit)).await;
    let before = app.wallet(&wallet).await;

    let key = new_key();
    let response = reverse(
        &app,
        &id_of(&debit),
        &key,
        &json!({"reason": "customer refund"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let reversal: Value = response.json().await.unwrap();
    assert_members(&reversal, &TRANSACTION_FIELDS);
    assert_eq!(reversal["type"], "reversal");
    assert_eq!(reversal["reverses"], debit["id"]);
    assert_eq!(reversal["hold_id"], Value::Null);
    assert_eq!(reversal["amount"], "30.00", "the default is all of it");
    assert_eq!(reversal["currency"], "EUR");
    assert_eq!(reversal["wallet_id"], wallet.as_str());
    assert_eq!(reversal["balance_before"], "70.00");
    assert_eq!(reversal["balance_after"], "100.00");
    assert_eq!(reversal["description"], "customer refund");
    assert_eq!(reversal["idempotency_key"], key.as_str());
    assert_eq!(reversal["seq"], 3);
    assert_ne!(reversal["id"], debit["id"]);

    let after = app.wallet(&wallet).await;
    assert_eq!(after["balance"], "100.00");
    assert_eq!(after["available"], "100.00");
    assert_eq!(version(&after), version(&before) + 1);
    assert_eq!(
        transaction_bytes(&app, &id_of(&debit)).await,
        original,
        "the original changed"
    );
    let response = app
        .get(&format!("/v1/transactions/{}", id_of(&reversal)))
        .await;
    assert_eq!(response.json::<Value>().await.unwrap(), reversal);
    app.assert_invariants(&wallet).await;
}

/// Guard: the default amount (`remaining = original - reversed so far`) and the
/// `remaining <= 0 || amount > remaining` check — a partial reversal, then the rest by
/// default (`{}` or `"amount": null`), then nothing is left (422 `reversal_exceeds_original`,
/// stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_reversal_then_the_rest_by_default_then_nothing_is_left() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit = entry(&app, &wallet, "debit", "30.00").await;
    let debit_id = id_of(&debit);

    let partial = reverse_ok(&app, &debit_id, &json!({"amount": "10.00"})).await;
    assert_eq!(partial["amount"], "10.00");
    assert_eq!(partial["balance_after"], "80.00");
    assert_eq!(
        partial["description"],
        Value::Null,
        "no reason, no description"
    );
    let rest = reverse_ok(&app, &debit_id, &json!({})).await;
    assert_eq!(
        rest["amount"], "20.00",
        "the default is what is not yet reversed"
    );
    assert_eq!(rest["balance_after"], "100.00");
    let before = app.wallet(&wallet).await;

    // `null` is the same as absent (the schema says so): the default, so nothing is left.
    for body in [
        json!({}),
        json!({"amount": null}),
        json!({"amount": "0.01"}),
    ] {
        assert_replays(
            &app,
            &wallet,
            &format!("/v1/transactions/{debit_id}/reverse"),
            &new_key(),
            &body,
        )
        .await;
        assert_problem(
            reverse(&app, &debit_id, &new_key(), &body).await,
            422,
            "reversal_exceeds_original",
        )
        .await;
    }
    assert_eq!(app.wallet(&wallet).await, before);
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(reversed_total(&entries, &debit_id), dec(&debit["amount"]));
}

/// Guard: `amount > remaining` — a reversal larger than what is left of the original is 422
/// `reversal_exceeds_original` and moves nothing, before and after a partial reversal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_above_what_is_left_is_reversal_exceeds_original() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit_id = id_of(&entry(&app, &wallet, "debit", "30.00").await);
    let before = app.wallet(&wallet).await;
    let problem = assert_problem(
        reverse(&app, &debit_id, &new_key(), &json!({"amount": "30.01"})).await,
        422,
        "reversal_exceeds_original",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("30.00"),
        "{problem}"
    );
    assert_eq!(app.wallet(&wallet).await, before);

    reverse_ok(&app, &debit_id, &json!({"amount": "20.00"})).await;
    let before = app.wallet(&wallet).await;
    assert_problem(
        reverse(&app, &debit_id, &new_key(), &json!({"amount": "10.01"})).await,
        422,
        "reversal_exceeds_original",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);
    let exact = reverse_ok(&app, &debit_id, &json!({"amount": "10.00"})).await;
    assert_eq!(exact["balance_after"], "100.00");
    app.assert_invariants(&wallet).await;
}

/// Guard: `reverse` for a credit — the reversal debits the wallet (`Direction::Out`) and
/// needs the funds: `available` (net of holds) below the amount is 422
/// `insufficient_funds`, stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_of_a_credit_debits_and_needs_the_funds() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let credit = entry(&app, &wallet, "credit", "50.00").await;
    let credit_id = id_of(&credit);

    let reversal = reverse_ok(&app, &credit_id, &json!({"amount": "20.00"})).await;
    assert_eq!(reversal["type"], "reversal");
    assert_eq!(reversal["reverses"], credit_id.as_str());
    assert_eq!(reversal["balance_before"], "50.00");
    assert_eq!(reversal["balance_after"], "30.00");
    assert_eq!(app.wallet(&wallet).await["balance"], "30.00");

    // The money is spent: the rest (30.00) cannot be taken back.
    app.debit(&wallet, &new_key(), "25.00").await;
    let before = app.wallet(&wallet).await;
    assert_replays(
        &app,
        &wallet,
        &format!("/v1/transactions/{credit_id}/reverse"),
        &new_key(),
        &json!({}),
    )
    .await;
    assert_problem(
        reverse(&app, &credit_id, &new_key(), &json!({})).await,
        422,
        "insufficient_funds",
    )
    .await;
    // A hold counts: 5.00 of balance, 4.00 held, so 1.01 is too much and 1.00 is not.
    place_ok(&app, &wallet, "4.00").await;
    assert_problem(
        reverse(&app, &credit_id, &new_key(), &json!({"amount": "1.01"})).await,
        422,
        "insufficient_funds",
    )
    .await;
    let last = reverse_ok(&app, &credit_id, &json!({"amount": "1.00"})).await;
    assert_eq!(last["balance_after"], "4.00");
    let state = app.wallet(&wallet).await;
    assert_eq!(state["available"], "0.00");
    assert_eq!(version(&state), version(&before) + 2);
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(reversed_total(&entries, &credit_id), dec(&json!("21.00")));
}

/// Guard: the `entry_type == "reversal"` check — a reversal of a reversal is 422
/// `not_reversible` (stored), and the reversal itself stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_cannot_be_reversed() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit_id = id_of(&entry(&app, &wallet, "debit", "30.00").await);
    let reversal = reverse_ok(&app, &debit_id, &json!({"amount": "10.00"})).await;
    let bytes = transaction_bytes(&app, &id_of(&reversal)).await;
    let before = app.wallet(&wallet).await;

    for body in [json!({}), json!({"amount": "1.00"})] {
        assert_replays(
            &app,
            &wallet,
            &format!("/v1/transactions/{}/reverse", id_of(&reversal)),
            &new_key(),
            &body,
        )
        .await;
        assert_problem(
            reverse(&app, &id_of(&reversal), &new_key(), &body).await,
            422,
            "not_reversible",
        )
        .await;
    }
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(transaction_bytes(&app, &id_of(&reversal)).await, bytes);
}

/// Guard: the tenant filter of `transaction_wallet` and `lock_wallet` — an unknown id, another
/// tenant's entry and a non-UUID all answer 404 `transaction_not_found`; the foreign wallet is
/// not touched; a well-formed id's decline is stored, a non-UUID's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_foreign_transaction_is_transaction_not_found() {
    let app = TestApp::spawn().await;
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let response = app
        .post_as(
            &other_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    let foreign_wallet = id_of(&response.json::<Value>().await.unwrap());
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{foreign_wallet}/credit"),
            &new_key(),
            &json!({"amount": "100.00", "currency": "EUR"}),
        )
        .await;
    let foreign_credit = id_of(&response.json::<Value>().await.unwrap());
    let unknown = uuid::Uuid::now_v7().to_string();

    for id in [unknown.as_str(), foreign_credit.as_str(), "not-a-uuid"] {
        assert_problem(
            reverse(&app, id, &new_key(), &json!({})).await,
            404,
            "transaction_not_found",
        )
        .await;
    }
    for id in [unknown.as_str(), foreign_credit.as_str()] {
        let key = new_key();
        let first = Answer::of(reverse(&app, id, &key, &json!({})).await).await;
        let again = Answer::of(reverse(&app, id, &key, &json!({})).await).await;
        assert!(again.replayed, "transaction_not_found for {id} is stored");
        assert_eq!(again.bytes, first.bytes);
    }
    let key = new_key();
    reverse(&app, "not-a-uuid", &key, &json!({})).await;
    let again = reverse(&app, "not-a-uuid", &key, &json!({})).await;
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_problem(again, 404, "transaction_not_found").await;

    let response = app
        .get_as(&other_key, &format!("/v1/wallets/{foreign_wallet}"))
        .await;
    let state: Value = response.json().await.unwrap();
    assert_eq!(state["balance"], "100.00");
    assert_eq!(state["version"], 2);
}

/// Guard: a reversal's amount is parsed in the original's currency and its reason bounded
/// like a description: too many fraction digits, a non-positive amount, a reason that is
/// empty, too long or has control characters are 400 `validation_failed`, not stored (the
/// same key then reverses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_body_is_checked_against_the_original_currency() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("JPY").await;
    app.fund(&wallet, "1000").await;
    let response = app
        .post(
            &format!("/v1/wallets/{wallet}/debit"),
            &new_key(),
            &json!({"amount": "500", "currency": "JPY"}),
        )
        .await;
    let debit_id = id_of(&response.json::<Value>().await.unwrap());
    let before = app.wallet(&wallet).await;

    let key = new_key();
    for body in [
        json!({"amount": "1.5"}),
        json!({"amount": "100.0"}),
        json!({"amount": "0"}),
        json!({"amount": "-1"}),
        json!({"amount": 100}),
        json!({"reason": ""}),
        json!({"reason": "x".repeat(1025)}),
        json!({"reason": "line\nbreak"}),
        json!({"amount": "100", "unknown": true}),
    ] {
        assert_problem(
            reverse(&app, &debit_id, &key, &body).await,
            400,
            "validation_failed",
        )
        .await;
    }
    assert_eq!(app.wallet(&wallet).await, before);

    let reversal = reverse_ok(
        &app,
        &debit_id,
        &json!({"amount": "100", "reason": "x".repeat(1024)}),
    )
    .await;
    assert_eq!(reversal["amount"], "100");
    assert_eq!(reversal["balance_after"], "600");
    let response = reverse(&app, &debit_id, &key, &json!({"amount": "100"})).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the 400s were not stored"
    );
    app.assert_invariants(&wallet).await;
}

/// Guard: the reversal limit under contention in one process (its local queue and Redlock
/// order the reversals of one entry, and each sees every earlier one in "reversed so far"; one
/// process, so this passes with the row lock deleted — the row lock alone is proven by
/// `the_row_lock_alone_keeps_reversals_within_the_original_across_two_processes`): 10
/// concurrent reversals of 3.00 on a 10.00 debit, distinct keys, shed answers retried —
/// exactly 3 succeed, 9.00 reversed, never more than 10.00, the original unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_reversals_never_exceed_the_original() {
    let app = TestApp::spawn_with(|s| {
        s.database.pool_max_size = 16;
        s.lock.wait_ms_max = 8_000;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit = entry(&app, &wallet, "debit", "10.00").await;
    let debit_id = id_of(&debit);
    let original = transaction_bytes(&app, &debit_id).await;
    let path = format!("/v1/transactions/{debit_id}/reverse");

    let answers: Vec<(StatusCode, Value)> = join_all((0..10).map(|_| async {
        let decided = app
            .post_until_decided(&path, &new_key(), &json!({"amount": "3.00"}))
            .await;
        (decided.status, decided.body)
    }))
    .await;

    assert_eq!(
        count_answers(&answers, StatusCode::CREATED, None),
        3,
        "{answers:?}"
    );
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reversal_exceeds_original")
        ),
        7,
        "{answers:?}"
    );
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(reversed_total(&entries, &debit_id), dec(&json!("9.00")));
    assert_eq!(app.wallet(&wallet).await["balance"], "99.00");
    assert_eq!(transaction_bytes(&app, &debit_id).await, original);
    // What is left (1.00) is still there to reverse, and no more.
    let rest = reverse_ok(&app, &debit_id, &json!({})).await;
    assert_eq!(rest["amount"], "1.00");
}

/// Guard: the row lock alone (`lock_wallet`'s `FOR UPDATE`) keeps the reversal limit: 10
/// reversals of 3.00 on a 10.00 debit through two processes whose Redlocks and queues cannot
/// see each other, both first transactions released onto the wallet row at once. Without the
/// row lock both decide on the same "reversed so far" and the database refuses the second
/// (a 500). Exactly 3 succeed, 9.00 reversed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_lock_alone_keeps_reversals_within_the_original_across_two_processes() {
    let processes = TwoProcesses::start().await;
    let app = &processes.first;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit_id = id_of(&entry(app, &wallet, "debit", "10.00").await);
    let requests: Vec<(String, Value)> = (0..10)
        .map(|_| {
            (
                format!("/v1/transactions/{debit_id}/reverse"),
                json!({"amount": "3.00"}),
            )
        })
        .collect();

    let answers = race_on_row(&processes, &wallet, &requests).await;

    let answers: Vec<(StatusCode, Value)> =
        answers.into_iter().map(|a| (a.status, a.body)).collect();
    assert_eq!(
        count_answers(&answers, StatusCode::CREATED, None),
        3,
        "{answers:?}"
    );
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reversal_exceeds_original")
        ),
        7,
        "{answers:?}"
    );
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(reversed_total(&entries, &debit_id), dec(&json!("9.00")));
    assert_eq!(processes.second.wallet(&wallet).await["balance"], "99.00");
}

/// Guard: layer 1 on the reverse route — 201 and declines replay byte for byte with
/// `Idempotent-Replayed: true`; the same key for another body or entry is 422
/// `idempotency_key_reused`; no key is 400 `idempotency_key_missing`. Nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_route_is_idempotent() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let debit_id = id_of(&entry(&app, &wallet, "debit", "30.00").await);
    let other_id = id_of(&entry(&app, &wallet, "debit", "5.00").await);
    let path = format!("/v1/transactions/{debit_id}/reverse");

    let key = new_key();
    let body = json!({"amount": "10.00", "reason": "partial refund"});
    assert_replays(&app, &wallet, &path, &key, &body).await;
    // Members in another order: the same request.
    let replay = Answer::of(
        post_raw(
            &app,
            &path,
            Some(&key),
            r#"{ "reason": "partial refund", "amount": "10.00" }"#,
        )
        .await,
    )
    .await;
    assert!(replay.replayed);
    assert_eq!(replay.status, StatusCode::CREATED);
    let before = app.wallet(&wallet).await;
    for (path, body) in [
        (
            path.clone(),
            json!({"amount": "11.00", "reason": "partial refund"}),
        ),
        (path.clone(), json!({"amount": "10.00"})),
        (format!("/v1/transactions/{other_id}/reverse"), body.clone()),
    ] {
        assert_problem(
            app.post(&path, &key, &body).await,
            422,
            "idempotency_key_reused",
        )
        .await;
    }
    assert_problem(
        post_raw(&app, &path, None, "{}").await,
        400,
        "idempotency_key_missing",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(reversed_total(&entries, &debit_id), dec(&json!("10.00")));
}

/// SHA-256(prev_hash || RFC 8785 of the entry without `hash`). For these entries (ASCII
/// strings, small integers, nulls, flat metadata) RFC 8785 is serde_json's compact output with
/// members sorted (serde_json's default map is ordered by key).
fn recomputed_hash(entry: &Value) -> String {
    let mut without = entry.clone();
    without.as_object_mut().unwrap().remove("hash");
    let mut hasher = Sha256::new();
    hasher.update(entry["prev_hash"].as_str().unwrap().as_bytes());
    hasher.update(serde_json::to_vec(&without).unwrap());
    hex::encode(hasher.finalize())
}

/// Guard: `append_entry` seals every kind of entry into one chain from the wallet's
/// `last_hash` — seq 1's `prev_hash` is 64 zeros, each `prev_hash` is the previous entry's
/// `hash`, and each hash recomputes from the entry as the API shows it; across credits,
/// debits, a capture and reversals of a debit, a credit and a capture. The replies of the
/// writes are the entries the ledger shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_chain_links_every_kind_of_entry() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let mut written = vec![entry(&app, &wallet, "credit", "100.00").await];
    written.push(entry(&app, &wallet, "debit", "10.00").await);
    let hold = id_of(&place_ok(&app, &wallet, "20.00").await);
    let response = capture(&app, &hold, &new_key(), &json!({"amount": "15.00"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let captured: Value = response.json().await.unwrap();
    written.push(captured.clone());
    let debit_id = id_of(&written[1]);
    let credit_id = id_of(&written[0]);
    written.push(
        reverse_ok(
            &app,
            &debit_id,
            &json!({"amount": "4.00", "reason": "refund"}),
        )
        .await,
    );
    written.push(reverse_ok(&app, &credit_id, &json!({"amount": "1.00"})).await);
    written.push(reverse_ok(&app, &id_of(&captured), &json!({})).await);
    written.push(entry(&app, &wallet, "credit", "3.00").await);

    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(
        entries, written,
        "the ledger shows what the writes answered"
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "96.00");
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "credit", "debit", "debit", "reversal", "reversal", "reversal", "credit"
        ]
    );
    assert_eq!(entries[2]["hold_id"], hold.as_str());
    assert_eq!(entries[5]["reverses"], captured["id"]);
    assert_eq!(
        entries[5]["balance_after"], "93.00",
        "a reversed capture credits"
    );
    assert_eq!(
        entries[4]["balance_after"], "78.00",
        "a reversed credit debits"
    );

    let mut hashes = HashMap::new();
    let mut previous = "0".repeat(64);
    for entry in &entries {
        let hash = entry["hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{hash}"
        );
        assert_eq!(
            entry["prev_hash"],
            previous.as_str(),
            "chain broken at {entry}"
        );
        assert_eq!(
            recomputed_hash(entry),
            hash,
            "hash does not recompute at {entry}"
        );
        assert!(
            hashes
                .insert(hash.to_owned(), entry["seq"].clone())
                .is_none()
        );
        previous = hash.to_owned();
    }
}
