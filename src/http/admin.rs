//! Admin HTTP (DESIGN.md 3.2): `/healthz` answers 200 while the process runs; `/readyz` answers
//! 200 only when the database answers within 1 s and the process is not draining, else 503
//! with a one-line reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::store::Store;

/// How long readiness waits for the database.
pub const READY_DB_TIMEOUT: Duration = Duration::from_secs(1);

/// What readiness looks at.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub draining: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn metrics_text(State(state): State<AdminState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(state.store.pool_status()),
    )
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match readiness(&state).await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// `Ok` when the service should receive traffic; otherwise the one-line reason.
pub async fn readiness(state: &AdminState) -> Result<(), String> {
    if state.draining.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    match tokio::time::timeout(READY_DB_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "database did not answer within {READY_DB_TIMEOUT:?}"
        )),
    }
}
