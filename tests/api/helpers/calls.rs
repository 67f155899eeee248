//! Calling the server: the one HTTP client, metrics text, and what a failed gRPC call said.

use super::*;

/// The tests' one HTTP client (hyper-util's, HTTP/1.1, a new connection per request):
/// (status, headers as `name: value` lines, body). Status 0 when nothing answered (nothing
/// listens yet, or the listener closed during the request).
pub async fn http_request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONNECTION, "close");
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    let request = request
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let Ok(response) = client.request(request).await else {
        return (0, String::new(), String::new());
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap_or_default()))
        .collect();
    let body = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => return (0, String::new(), String::new()),
    };
    (status, headers, body)
}

/// GET: (status, body); status 0 when nothing answered.
pub async fn http_get(url: &str) -> (u16, String) {
    let (status, _, body) = http_request("GET", url, None, b"").await;
    (status, body)
}

/// POST with a content type: (status, headers, body).
pub async fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, String, String) {
    http_request("POST", url, Some(content_type), body).await
}

/// The sum of the Prometheus samples of `name` whose labels include every pair in `labels`;
/// `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The code, `ErrorInfo` reason and message of a failed call.
pub fn failure(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
) -> (tonic::Code, String, String) {
    use tonic_types::StatusExt;
    match result {
        Ok(response) => panic!("expected a failure, got agent {:?}", response.agent_name),
        Err(status) => {
            let info = status.get_details_error_info();
            if let Some(info) = &info {
                assert_eq!(info.domain, "agent-auth", "ErrorInfo domain");
            }
            (
                status.code(),
                info.map(|i| i.reason).unwrap_or_default(),
                status.message().to_owned(),
            )
        }
    }
}

/// Asserts that a call failed with this code and `ErrorInfo` reason; returns the message.
#[track_caller]
pub fn fails_with(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) -> String {
    let (got_code, got_reason, message) = failure(result);
    assert_eq!((got_code, got_reason.as_str()), (code, reason), "{message}");
    message
}

pub fn success(
    result: Result<pb::AuthenticateResponse, tonic::Status>,
) -> pb::AuthenticateResponse {
    result.unwrap_or_else(|s| panic!("expected success, got {}", agent_auth::client::describe(&s)))
}
