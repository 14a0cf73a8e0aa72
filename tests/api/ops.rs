//! Operations (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) and the conventions every
//! response follows: `Cache-Control: no-store`, `X-Request-Id`, content types, 404/405/415.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, base_settings, new_key, sample, server_url};

const OPERATIONAL_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// `host:port` of the shared Redis, as `/readyz` labels it.
fn redis_node() -> String {
    let url = url::Url::parse(&base_settings().redis.urls[0]).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(6379))
}

fn unreachable_database(settings: &mut walletd::config::Settings) {
    settings.database.url = "postgres://postgres@127.0.0.1:1/none".into();
    settings.database.connect_timeout_ms = 500;
    settings.database.pool_wait_timeout_ms = 500;
}

/// The media type of a response, without parameters.
fn essence(headers: &HeaderMap) -> String {
    headers
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_200() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(essence(response.headers()), "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(body.is_object(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_when_postgres_and_redis_are_up() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(essence(response.headers()), "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "postgres": "up",
               "redis": [{"node": redis_node(), "status": "up"}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_degraded_but_200_when_a_redis_node_is_down_and_never_shows_a_password() {
    let real = base_settings().redis.urls[0].clone();
    let app = TestApp::spawn_with(move |settings| {
        settings.redis.urls = vec![real, "redis://:s3cret-pw@127.0.0.1:1".into()];
    })
    .await;
    let started = Instant::now();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({"status": "degraded", "postgres": "up", "redis": [
            {"node": redis_node(), "status": "up"},
            {"node": "127.0.0.1:1", "status": "down"},
        ]})
    );
    // Degraded is still ready: debits go on (under the row lock).
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let response = app.debit(&wallet, &new_key(), "1.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_unavailable_when_postgres_is_unreachable() {
    let app = TestApp::spawn_with(unreachable_database).await;
    let started = Instant::now();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(essence(response.headers()), "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "unavailable", "postgres": "down",
               "redis": [{"node": redis_node(), "status": "up"}]})
    );
    // Liveness is not readiness.
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_migrations_are_not_applied() {
    let name = format!("walletd_t_{}", Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", server_url()))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let empty = format!("{}/{name}", server_url());
    let app = TestApp::spawn_with(move |settings| settings.database.url = empty).await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_entries_replays_and_lock_waits() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    assert_eq!(
        app.debit(&wallet, "m-1", "10.00").await.status(),
        StatusCode::CREATED
    );
    let replay = app.debit(&wallet, "m-1", "10.00").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let declined = app.debit(&wallet, "m-2", "1000.00").await;
    assert_problem(declined, 422, "insufficient_funds").await;
    let stray = Uuid::new_v4();
    let response = app.get(&format!("/v1/nothing/{stray}")).await;
    assert_problem(response, 404, "not_found").await;

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(essence(response.headers()), "text/plain");
    let text = response.text().await.unwrap();
    for family in [
        "walletd_http_requests_total counter",
        "walletd_http_request_duration_seconds histogram",
        "walletd_entries_total counter",
        "walletd_idempotent_replays_total counter",
        "walletd_lock_wait_seconds histogram",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "no {family} in\n{text}"
        );
    }
    let debit_route = ("route", "/v1/wallets/{id}/debit");
    assert_eq!(
        sample(
            &text,
            "walletd_http_requests_total",
            &[("method", "POST"), debit_route, ("status", "201")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_http_requests_total",
            &[("method", "POST"), debit_route, ("status", "422")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_entries_total",
            &[("type", "debit"), ("status", "201")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_entries_total",
            &[("type", "credit"), ("status", "201")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_idempotent_replays_total",
            &[("operation", "debit")]
        ),
        Some(1.0),
        "{text}"
    );
    let lock_waits = sample(
        &text,
        "walletd_lock_wait_seconds_count",
        &[("outcome", "acquired")],
    );
    assert!(lock_waits.is_some_and(|n| n >= 3.0), "{text}");
    assert!(text.contains("walletd_db_pool_connections"), "{text}");
    // Labels are route patterns, never ids: bounded cardinality, nothing private.
    for private in [
        wallet.as_str(),
        &stray.to_string(),
        &app.api_key,
        &app.tenant_id,
    ] {
        assert!(!text.contains(private), "{private} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(essence(response.headers()), "application/json");
    let doc: Value = response.json().await.unwrap();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1"), "{version}");
    for (path, method) in [
        ("/v1/wallets", "post"),
        ("/v1/wallets/{id}", "get"),
        ("/v1/wallets/{id}/debit", "post"),
        ("/v1/wallets/{id}/credit", "post"),
        ("/v1/wallets/{id}/ledger", "get"),
        ("/v1/transactions/{id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from {}",
            doc["paths"]
        );
    }
}

/// One request of every kind of response; each entry is (what, expected status, response).
async fn every_kind_of_response(
    app: &TestApp,
    request_id: Option<&str>,
) -> Vec<(String, u16, Response)> {
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let with_id = |builder: RequestBuilder| match request_id {
        Some(id) => builder.header("X-Request-Id", id),
        None => builder,
    };
    let authed = |method: Method, path: &str| {
        with_id(
            app.client
                .request(method, app.url(path))
                .bearer_auth(&app.api_key),
        )
    };
    let entry = json!({"amount": "1.00", "currency": "EUR"});
    let debit = format!("/v1/wallets/{wallet}/debit");
    let key = new_key();
    let cases: Vec<(&str, u16, RequestBuilder)> = vec![
        (
            "GET wallet",
            200,
            authed(Method::GET, &format!("/v1/wallets/{wallet}")),
        ),
        (
            "POST debit",
            201,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", &key)
                .json(&entry),
        ),
        (
            "POST debit replayed",
            201,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", &key)
                .json(&entry),
        ),
        (
            "declined debit",
            422,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", new_key())
                .json(&json!({"amount": "1000.00", "currency": "EUR"})),
        ),
        (
            "validation problem",
            400,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", new_key())
                .json(&json!({"amount": 1, "currency": "EUR"})),
        ),
        (
            "unauthorized",
            401,
            with_id(app.client.get(app.url(&format!("/v1/wallets/{wallet}")))),
        ),
        (
            "wallet not found",
            404,
            authed(Method::GET, &format!("/v1/wallets/{}", Uuid::now_v7())),
        ),
        (
            "unknown route",
            404,
            authed(Method::GET, "/v1/nothing-here"),
        ),
        ("wrong method", 405, authed(Method::DELETE, &debit)),
        (
            "too large",
            413,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", new_key())
                .header("Content-Type", "application/json")
                .body(format!(
                    r#"{{"amount":"1.00","currency":"EUR","description":"{}"}}"#,
                    "x".repeat(70_000)
                )),
        ),
        (
            "not JSON",
            415,
            authed(Method::POST, &debit)
                .header("Idempotency-Key", new_key())
                .header("Content-Type", "text/plain")
                .body(entry.to_string()),
        ),
        ("healthz", 200, with_id(app.client.get(app.url("/healthz")))),
        ("readyz", 200, with_id(app.client.get(app.url("/readyz")))),
        ("metrics", 200, with_id(app.client.get(app.url("/metrics")))),
        (
            "openapi",
            200,
            with_id(app.client.get(app.url("/openapi.json"))),
        ),
    ];
    let mut responses = Vec::new();
    for (what, status, builder) in cases {
        let response = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        responses.push((what.to_owned(), status, response));
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_response_carries_no_store_and_echoes_the_request_id() {
    let app = TestApp::spawn().await;
    for (what, status, response) in every_kind_of_response(&app, Some("req-Abc.123_x")).await {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        assert_eq!(headers["x-request-id"], "req-Abc.123_x", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_when_none_is_given() {
    let app = TestApp::spawn().await;
    let mut seen = HashSet::new();
    for (what, status, response) in every_kind_of_response(&app, None).await {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(!id.trim().is_empty(), "{what}: empty X-Request-Id");
        assert!(
            seen.insert(id.clone()),
            "{what}: X-Request-Id {id} repeated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_is_json_on_success_and_problem_json_on_errors() {
    let app = TestApp::spawn().await;
    for (what, status, response) in every_kind_of_response(&app, None).await {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let expected = match (status, what.as_str()) {
            (200, "metrics") => "text/plain",
            (200 | 201, _) => "application/json",
            _ => "application/problem+json",
        };
        assert_eq!(essence(response.headers()), expected, "{what}");
        if expected != "text/plain" {
            let body: Value = response
                .json()
                .await
                .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
            if expected == "application/problem+json" {
                assert_eq!(body["status"], status, "{what}: {body}");
                assert!(body["code"].is_string(), "{what}: {body}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_with_allow() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    for (method, path, allow) in [
        (Method::GET, "/v1/wallets".to_owned(), "POST"),
        (Method::DELETE, "/v1/wallets".to_owned(), "POST"),
        (Method::PUT, format!("/v1/wallets/{id}"), "GET"),
        (Method::POST, format!("/v1/wallets/{id}"), "GET"),
        (Method::DELETE, format!("/v1/wallets/{id}"), "GET"),
        (Method::GET, format!("/v1/wallets/{id}/debit"), "POST"),
        (Method::PATCH, format!("/v1/wallets/{id}/credit"), "POST"),
        (Method::POST, format!("/v1/wallets/{id}/ledger"), "GET"),
        (Method::DELETE, format!("/v1/transactions/{id}"), "GET"),
        (Method::POST, "/healthz".to_owned(), "GET"),
        (Method::POST, "/readyz".to_owned(), "GET"),
        (Method::PUT, "/metrics".to_owned(), "GET"),
        (Method::POST, "/openapi.json".to_owned(), "GET"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", new_key())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let allowed = response
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow"))
            .to_str()
            .unwrap()
            .to_owned();
        let allowed: Vec<&str> = allowed.split(',').map(str::trim).collect();
        assert!(
            allowed.contains(&allow),
            "{method} {path}: Allow {allowed:?}"
        );
        assert!(
            !allowed.contains(&method.as_str()),
            "{method} {path}: Allow {allowed:?}"
        );
        assert_problem(response, 405, "method_not_allowed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_problems() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    for (method, path) in [
        (Method::GET, "/".to_owned()),
        (Method::GET, "/v1".to_owned()),
        (Method::GET, "/v2/wallets".to_owned()),
        (Method::GET, format!("/v1/wallet/{id}")),
        (Method::POST, format!("/v1/wallets/{id}/refund")),
        (Method::GET, format!("/v1/wallets/{id}/ledger/extra")),
        (Method::GET, "/v1/transactions".to_owned()),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .bearer_auth(&app.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_problem(response, 404, "not_found").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_415_and_not_stored() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = app.wallet(&wallet).await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = r#"{"amount":"1.00","currency":"EUR"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("text/json"),
        None,
    ] {
        let mut request = app
            .client
            .post(app.url(&path))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", "typed")
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_problem(response, 415, "unsupported_media_type").await;
    }
    let response = app
        .client
        .post(app.url("/v1/wallets"))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", new_key())
        .header("Content-Type", "text/plain")
        .body(r#"{"currency":"EUR"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported_media_type").await;
    assert_eq!(app.wallet(&wallet).await, before);

    // Parameters and case do not matter; the 415s were not stored under the key.
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = app
            .client
            .post(app.url(&path))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", "typed")
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "99.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_routes_need_no_auth_and_ignore_a_bad_one() {
    let app = TestApp::spawn().await;
    for path in OPERATIONAL_ROUTES {
        for authorization in [None, Some("Bearer not-a-key"), Some("Basic Zm9vOmJhcg==")] {
            let mut request = app.client.get(app.url(path));
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{path} {authorization:?}"
            );
            assert!(response.headers().get("www-authenticate").is_none());
        }
    }
    // While every /v1 route does need a key.
    let response = app
        .client
        .get(app.url(&format!("/v1/wallets/{}", Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
}
