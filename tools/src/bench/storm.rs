//! The boot storm: N distinct agents arrive within a window (default: 10,000 within one
//! second), each logs in once, and each retries as Coder's agent does until it holds its token.
//! What counts is how long until the last agent holds its token, not a rate at a fixed number
//! of callers.
//!
//! The retry policy emulated: on RESOURCE_EXHAUSTED (shed by the concurrency limit), UNAVAILABLE
//! or a missed deadline, wait and try again; the waits grow exponentially from 100 ms, doubling,
//! up to 10 s, each with random jitter (backon's `ExponentialBuilder` with jitter), which is
//! the shape of the agent's reconnect loop (`retry.New(100*time.Millisecond, 10*time.Second)`
//! in Coder's agent). Any other answer ends the agent's attempts: it failed for good. An agent
//! that has no token after `give_up` also failed for good.
//!
//! The agents share a fixed set of HTTP/2 channels (many agents' requests on one connection):
//! the bench process does not open one connection per agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use serde::Serialize;

use agent_auth::grpc::pb;

/// How the storm arrives and how long an agent keeps trying.
#[derive(Debug, Clone, Copy)]
pub struct StormOptions {
    pub agents: usize,
    /// The agents' arrivals are spread evenly over this window.
    pub arrival: Duration,
    /// Each attempt's deadline (the bench's `--deadline`).
    pub deadline: Duration,
    /// An agent without a token this long after its arrival failed for good.
    pub give_up: Duration,
}

/// What the storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub agents: usize,
    pub arrival_ms: f64,
    /// From the first arrival until the last agent held its token.
    pub all_in_ms: f64,
    /// From the last arrival until the last agent held its token.
    pub after_last_arrival_ms: f64,
    /// Per agent, from its arrival until it held its token (agents that got one).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Logins that got a token, and agents that never did.
    pub logged_in: usize,
    pub failed_for_good: usize,
    /// Every attempt, and the answers that made an agent retry.
    pub attempts: u64,
    pub shed: u64,
    pub unavailable: u64,
    pub missed_deadline: u64,
    /// Statements the server ran (its own counter) per agent; `None` without its metrics.
    pub statements_per_agent: Option<f64>,
}

/// How one agent's storm went.
struct AgentRun {
    /// From its arrival until it held its token; `None` if it never did.
    took: Option<Duration>,
    /// When it held its token, from the storm's start.
    done_at: Option<Duration>,
    attempts: u64,
    shed: u64,
    unavailable: u64,
    missed: u64,
}

/// Runs the storm: `documents[i]` is agent i's signed document and signature.
pub async fn run(
    options: StormOptions,
    documents: Arc<Vec<(String, String)>>,
    channels: Arc<Vec<tonic::transport::Channel>>,
) -> (StormReport, Duration) {
    let agents = options.agents.min(documents.len());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..agents {
        let arrives = options.arrival.mul_f64(i as f64 / agents.max(1) as f64);
        let (documents, channels) = (documents.clone(), channels.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until((start + arrives).into()).await;
            let (document, signature) = documents[i].clone();
            let channel = channels[i % channels.len()].clone();
            one_agent(options, start, channel, document, signature).await
        });
    }
    let mut runs = Vec::with_capacity(agents);
    while let Some(run) = tasks.join_next().await {
        if let Ok(run) = run {
            runs.push(run);
        }
    }
    let elapsed = start.elapsed();
    (summarise(options, &runs, agents), elapsed)
}

async fn one_agent(
    options: StormOptions,
    start: Instant,
    channel: tonic::transport::Channel,
    document: String,
    signature: String,
) -> AgentRun {
    let arrived = Instant::now();
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let mut run = AgentRun {
        took: None,
        done_at: None,
        attempts: 0,
        shed: 0,
        unavailable: 0,
        missed: 0,
    };
    while arrived.elapsed() < options.give_up {
        run.attempts += 1;
        let request = pb::AuthenticateRequest {
            identity: Some(pb::authenticate_request::Identity::Aws(
                pb::AwsInstanceIdentity {
                    document: document.clone(),
                    signature: signature.clone(),
                    rsa2048: String::new(),
                },
            )),
            agent_name: String::new(),
        };
        let answer = tokio::time::timeout(
            options.deadline,
            agent_auth::client::authenticate(channel.clone(), request),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {
                run.took = Some(arrived.elapsed());
                run.done_at = Some(start.elapsed());
                return run;
            }
            Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => run.shed += 1,
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => run.unavailable += 1,
            Ok(Err(_)) => return run,
            Err(_) => run.missed += 1,
        }
        match delays.next() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return run,
        }
    }
    run
}

fn summarise(options: StormOptions, runs: &[AgentRun], agents: usize) -> StormReport {
    let mut took: Vec<Duration> = runs.iter().filter_map(|r| r.took).collect();
    took.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let quantile = |q: f64| {
        if took.is_empty() {
            0.0
        } else {
            let at = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
            ms(took[at])
        }
    };
    let last = runs
        .iter()
        .filter_map(|r| r.done_at)
        .max()
        .unwrap_or_default();
    let last_arrival = options
        .arrival
        .mul_f64(agents.saturating_sub(1) as f64 / agents.max(1) as f64);
    let sum = |f: fn(&AgentRun) -> u64| runs.iter().map(f).sum::<u64>();
    StormReport {
        agents,
        arrival_ms: ms(options.arrival),
        all_in_ms: ms(last),
        after_last_arrival_ms: ms(last.saturating_sub(last_arrival)),
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        max_ms: took.last().copied().map_or(0.0, ms),
        logged_in: took.len(),
        failed_for_good: agents - took.len(),
        attempts: sum(|r| r.attempts),
        shed: sum(|r| r.shed),
        unavailable: sum(|r| r.unavailable),
        missed_deadline: sum(|r| r.missed),
        statements_per_agent: None,
    }
}
