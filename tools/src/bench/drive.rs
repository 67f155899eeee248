//! Closed-loop callers: C tasks each run one login after another for T seconds. Latencies,
//! error labels, statements and pool waits are tallied per task and merged at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What one login reports: how many statements it ran and how long it waited for the pool.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cost {
    pub statements: u32,
    pub pool_wait: Duration,
}

/// One scenario's numbers at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub description: String,
    pub concurrency: usize,
    /// Measured: counted by the emulations, or read from the service's metrics. `None` when
    /// the service's metrics are out of reach (`--server` without `--server-metrics`).
    pub statements_per_login: Option<f64>,
    pub logins: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub missed_deadline: u64,
    pub missed_share: f64,
    /// Mean time a login waited to check out a pooled connection.
    pub pool_wait_ms_mean: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    /// The service's pipeline depth in use at the end (mean over its connections; adaptive).
    pub depth_in_use: Option<f64>,
}

/// Latencies and error counts gathered by the callers.
#[derive(Default)]
pub struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    missed: u64,
    statements: u64,
    pool_wait: Duration,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.missed += other.missed;
        self.statements += other.statements;
        self.pool_wait += other.pool_wait;
    }

    /// Successful logins.
    pub fn logins(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// Statements and pool wait per successful login, as counted by the callers.
    pub fn counted_costs(&self) -> (f64, f64) {
        let logins = self.logins().max(1) as f64;
        (
            self.statements as f64 / logins,
            self.pool_wait.as_secs_f64() * 1000.0 / logins,
        )
    }

    pub fn outcome(
        mut self,
        scenario: &str,
        description: &str,
        concurrency: usize,
        elapsed: Duration,
        costs: (Option<f64>, Option<f64>),
    ) -> Outcome {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
            self.latencies_us[i] as f64 / 1000.0
        };
        let logins = self.logins();
        let attempts = (logins + self.errors.values().sum::<u64>()).max(1);
        Outcome {
            scenario: scenario.to_owned(),
            description: description.to_owned(),
            concurrency,
            statements_per_login: costs.0,
            logins,
            per_second: logins as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            missed_deadline: self.missed,
            missed_share: self.missed as f64 / attempts as f64,
            pool_wait_ms_mean: costs.1,
            errors: self.errors,
            depth_in_use: None,
        }
    }
}

/// How long callers keep calling: for `duration`, or until `logins` calls were started.
#[derive(Debug, Clone, Copy)]
pub struct Until {
    pub duration: Duration,
    pub logins: Option<u64>,
}

/// Runs `work` from `concurrency` callers [`Until`] the end; each call reports its [`Cost`] or an
/// error label. Calls that take longer than `deadline` are abandoned and counted as missed.
/// A progress bar on stderr (only when it is a terminal) shows the time left and logins so far.
pub async fn drive<F, Fut>(
    label: &str,
    concurrency: usize,
    until: Until,
    deadline: Duration,
    work: F,
) -> (Tally, Duration)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Cost, String>> + Send,
{
    let Until { duration, logins } = until;
    let limit = logins.unwrap_or(u64::MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (stop, counter, done, work) =
                (stop.clone(), counter.clone(), done.clone(), work.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if n >= limit {
                        break;
                    }
                    let begun = Instant::now();
                    match tokio::time::timeout(deadline, work(n)).await {
                        Ok(Ok(cost)) => {
                            tally.latencies_us.push(begun.elapsed().as_micros() as u64);
                            tally.statements += u64::from(cost.statements);
                            tally.pool_wait += cost.pool_wait;
                        }
                        Ok(Err(label)) => *tally.errors.entry(label).or_default() += 1,
                        Err(_) => {
                            tally.missed += 1;
                            *tally.errors.entry("deadline".into()).or_default() += 1;
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();
    let bar = progress_bar(label, duration);
    while started.elapsed() < duration && done.load(Ordering::Relaxed) < limit {
        tokio::time::sleep(Duration::from_millis(100).min(duration)).await;
        bar.set_position(started.elapsed().as_millis().min(duration.as_millis()) as u64);
        bar.set_message(format!("{} logins", done.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    bar.finish_and_clear();
    (total, started.elapsed())
}

/// A bar over the scenario's duration, drawn on stderr only when it is a terminal.
fn progress_bar(label: &str, duration: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(duration.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix:>40} [{bar:30}] {elapsed:>4} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// A measured number with `digits` decimals, or "-" where none was measured.
pub fn or_dash(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// Renders outcomes as a Markdown table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | callers | statements/login | logins/s | p50 ms | p95 ms | p99 ms | pool wait ms | missed deadline | errors |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} ({:.1} %) | {:?} |\n",
            o.description,
            o.concurrency,
            or_dash(o.statements_per_login, 2),
            o.per_second,
            o.p50_ms,
            o.p95_ms,
            o.p99_ms,
            or_dash(o.pool_wait_ms_mean, 2),
            o.missed_deadline,
            o.missed_share * 100.0,
            o.errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_shares_come_from_the_tally() {
        let mut tally = Tally {
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
            missed: 25,
            statements: 700,
            ..Tally::default()
        };
        tally.errors.insert("deadline".into(), 25);
        assert_eq!(tally.counted_costs().0, 7.0);
        let o = tally.outcome("s", "d", 8, Duration::from_secs(2), (Some(7.0), None));
        assert_eq!(o.logins, 100);
        assert_eq!(o.per_second, 50.0);
        assert_eq!(o.p50_ms, 51.0);
        assert_eq!(o.p99_ms, 99.0);
        assert_eq!(o.missed_share, 0.2);
        assert!(table(&[o]).contains("| d | 8 | 7.00 | 50 |"));
    }
}
