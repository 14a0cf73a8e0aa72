//! Headers on every response (`Cache-Control: no-store`, `X-Request-Id`), one log line and the
//! metrics per request.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, web};

use super::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id we echo; longer ones are replaced (the id lands in
/// every log line of the request).
const REQUEST_ID_LEN_MAX: usize = 1024;

/// The client's `X-Request-Id` if it is printable ASCII (spaces included) and at most
/// [`REQUEST_ID_LEN_MAX`] bytes, else a fresh UUID.
fn request_id(request: &ServiceRequest) -> HeaderValue {
    request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= REQUEST_ID_LEN_MAX
                && bytes.iter().all(|b| (0x20..=0x7E).contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .unwrap_or(HeaderValue::from_static("unknown"))
        })
}

pub async fn request_context(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id(&request);
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let method = request.method().clone();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let mut response = next.call(request).await?;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REQUEST_ID, id.clone());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(state) = state {
        state
            .metrics
            .record_http(method.as_str(), &route, status, elapsed);
    }
    tracing::info!(
        request_id = id.to_str().unwrap_or(""),
        method = %method,
        route = %route,
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}
