//! RFC 9457 problem documents, the body of every error walletd answers with. Below both the
//! HTTP layer (which renders every error with it) and the pipeline (which stores declines
//! rendered with it, so a replay returns the same bytes).

use serde::Serialize;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

/// The document's bytes: `type` is `urn:walletd:problem:<code>`.
pub fn render(status: u16, code: &str, title: &str, detail: &str) -> Vec<u8> {
    let problem = Problem {
        kind: format!("urn:walletd:problem:{code}"),
        title,
        status,
        detail,
        code,
    };
    serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_keep_the_member_order_clients_saw_before() {
        let body = render(422, "insufficient_funds", "Insufficient funds", "short");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"type":"urn:walletd:problem:insufficient_funds","title":"Insufficient funds","status":422,"detail":"short","code":"insufficient_funds"}"#
        );
    }
}
