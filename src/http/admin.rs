//! Admin HTTP (DESIGN.md 3.2): `/healthz` answers 200 while the process runs; `/readyz` answers
//! 200 only when the database answers within 1 s (or, when that round trip only timed out, its
//! connections answered statements within the statement timeout: slow, not gone) and the
//! process is not draining, else 503 with a one-line reason.

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

/// How often the background probe checks the database (readiness flips within two periods).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What readiness looks at.
#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    /// The trust set in force, for the expiry gauge.
    pub trust: Arc<crate::trust::TrustStore>,
    pub draining: Arc<AtomicBool>,
}

/// Keeps gRPC health in step with readiness: probes every [`PROBE_INTERVAL`] and sets
/// SERVING / NOT_SERVING, overall and for the service, when the answer changes. Ends when
/// `stop` resolves (shutdown sets NOT_SERVING itself).
pub async fn follow_readiness(
    state: AdminState,
    health: crate::grpc::Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
    initially_serving: bool,
) {
    let mut serving = Some(initially_serving);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let ready = readiness(&state).await;
        let now_serving = ready.is_ok();
        if serving != Some(now_serving) && !state.draining.load(Ordering::SeqCst) {
            health.set(now_serving).await;
            match &ready {
                Ok(()) => tracing::info!("ready: serving"),
                Err(reason) => tracing::warn!(reason, "not ready: not serving"),
            }
            serving = Some(now_serving);
        }
    }
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
        crate::metrics::render(
            &state.store.occupancy(),
            state
                .trust
                .current()
                .certificates
                .iter()
                .filter_map(|p| p.not_after_unix.map(|t| (p.cloud, p.label.as_str(), t))),
        ),
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
        Ok(Err(e)) => Err(e.report()),
        // Slow, not gone: the probe waited behind statements that are being answered.
        Err(_) if state.store.answered_lately() => Ok(()),
        Err(_) => Err(format!(
            "database did not answer within {READY_DB_TIMEOUT:?}"
        )),
    }
}
