//! `GET /openapi.json` as generators and linters read it, and the Swagger UI at `/docs`
//! (scripts/openapi_check.sh runs the real tools; these tests pin the properties they need).

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, assert_problem};

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// `(method, path, operation)` of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            all.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    all
}

/// Every value of `key` anywhere in `value`.
fn find_all<'a>(value: &'a Value, key: &str, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (name, member) in map {
                if name == key {
                    found.push(member);
                }
                find_all(member, key, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| find_all(item, key, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_say_security_none_and_the_rest_need_a_bearer_key_without_scopes() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&"http".into(), &"bearer".into())
    );
    let public: HashSet<&str> = walletd::api::PUBLIC_PATHS.into_iter().collect();
    for (method, path, operation) in operations(&doc) {
        let description = operation["description"].as_str().unwrap_or("");
        assert!(!description.is_empty(), "{method} {path}: no description");
        if public.contains(path.as_str()) {
            assert_eq!(operation["security"], serde_json::json!([]), "{path}");
            let response = app.client.get(app.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path} without a key");
        } else {
            assert!(path.starts_with("/v1/"), "{path} is neither public nor /v1");
            assert_eq!(
                operation["security"],
                serde_json::json!([{"bearer": []}]),
                "{path}"
            );
            let scope = ["wallets:write", "wallets:read", "ledger:read"]
                .iter()
                .any(|scope| description.contains(&format!("Scope `{scope}`")));
            assert!(scope, "{method} {path}: the description names no scope");
        }
    }
    for path in public {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} not documented"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_uuids_and_after_takes_what_next_cursor_returns() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (method, path, operation) in operations(&doc) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            if parameter["in"] == "path" {
                assert_eq!(parameter["name"], "id", "{method} {path}");
                assert_eq!(
                    (&parameter["schema"]["type"], &parameter["schema"]["format"]),
                    (&"string".into(), &"uuid".into()),
                    "{method} {path}"
                );
            }
        }
    }
    let ledger = &doc["paths"]["/v1/wallets/{id}/ledger"]["get"]["parameters"];
    let after = ledger
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "after")
        .unwrap();
    assert_eq!(after["schema"]["type"], "string");
    assert_eq!(after["schema"]["pattern"], "^[0-9]{1,19}$");
    let next_cursor = &doc["components"]["schemas"]["LedgerPage"]["properties"]["next_cursor"];
    assert!(
        next_cursor["type"]
            .as_array()
            .unwrap()
            .contains(&"string".into()),
        "{next_cursor}"
    );

    // A real cursor fits the pattern, and so does the largest one the pattern allows.
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "1.00").await;
    app.fund(&wallet, "2.00").await;
    let page: Value = app
        .get(&format!("/v1/wallets/{wallet}/ledger?limit=1"))
        .await
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    assert!((1..=19).contains(&cursor.len()) && cursor.bytes().all(|b| b.is_ascii_digit()));
    for (after, entries) in [(cursor, 1), ("0", 2), ("9999999999999999999", 0)] {
        let response = app
            .get(&format!("/v1/wallets/{wallet}/ledger?after={after}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "after={after}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(
            page["entries"].as_array().unwrap().len(),
            entries,
            "after={after}"
        );
    }
    for after in ["+1", "-1", "1e3", "99999999999999999999"] {
        let response = app
            .get(&format!("/v1/wallets/{wallet}/ledger?after={after}"))
            .await;
        assert_problem(response, 400, "validation_failed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_one_generators_can_name_and_examples_cover_every_operation() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(!doc["servers"].as_array().unwrap().is_empty());
    let tags: HashSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();

    // Generators name a class after a title: two alike make them drop both schemas.
    let mut titles = Vec::new();
    find_all(&doc["components"]["schemas"], "title", &mut titles);
    let titles: Vec<&str> = titles.iter().filter_map(|t| t.as_str()).collect();
    let unique: HashSet<&str> = titles.iter().copied().collect();
    assert_eq!(unique.len(), titles.len(), "repeated titles in {titles:?}");
    // Metadata is a plain object (nullable where it is optional, through anyOf).
    let metadata = &doc["components"]["schemas"]["Metadata"];
    assert_eq!(metadata["type"], "object");
    // A link's requestBody is a runtime expression (openapi-generator refuses anything else).
    let mut bodies = Vec::new();
    find_all(&doc["paths"], "requestBody", &mut bodies);
    let link_bodies = bodies.iter().filter(|b| !b.is_object()).count();
    assert!(link_bodies > 0);
    for body in bodies.iter().filter(|b| !b.is_object()) {
        assert!(body.as_str().is_some_and(|b| b.starts_with('$')), "{body}");
    }

    for (method, path, operation) in operations(&doc) {
        for tag in operation["tags"].as_array().unwrap() {
            assert!(
                tags.contains(tag.as_str().unwrap()),
                "{method} {path}: tag {tag}"
            );
        }
        if let Some(content) = operation["requestBody"]["content"].as_object() {
            for (media, body) in content {
                assert!(
                    !body["example"].is_null(),
                    "{method} {path}: request {media}"
                );
            }
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            let Some(content) = response["content"].as_object() else {
                continue;
            };
            for (media, body) in content {
                assert!(
                    !body["example"].is_null(),
                    "{method} {path} {status} {media}: no example"
                );
            }
        }
    }
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        let example = &response["content"]["application/problem+json"]["example"];
        assert!(example["code"].is_string(), "{name}: {example}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_is_served_from_the_binary_without_a_key() {
    let app = TestApp::spawn().await;
    for path in ["/docs", "/docs/", "/docs/index.html"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = response.text().await.unwrap();
        assert!(page.contains(r#"<div id="swagger-ui">"#), "{path}");
        // Absolute asset paths, so the page works with or without the trailing slash, and
        // nothing is fetched from another host.
        assert!(
            page.contains(r#"src="/docs/swagger-ui-bundle.js""#),
            "{path}"
        );
        assert!(!page.contains("http"), "{path}: {page}");
    }
    let bundle = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        initializer.contains(r#""url": "/openapi.json""#),
        "{initializer}"
    );
    assert!(
        initializer.contains(r#""validatorUrl": "none""#),
        "{initializer}"
    );

    let missing = app
        .client
        .get(app.url("/docs/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404, "not_found").await;
    let post = app.client.post(app.url("/docs")).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET");
}
