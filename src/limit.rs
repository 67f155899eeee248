//! The process-wide concurrency limit shared by every transport (gRPC and HTTP).
//!
//! Rule from review: tonic's concurrency limit is per connection, so it cannot protect the
//! database pool from many callers; one semaphore for the whole process does. A request that
//! finds no permit is shed at once (`try_acquire`), never queued past its deadline.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::REQUESTS_SHED;

#[derive(Clone)]
pub struct Limiter {
    permits: Arc<Semaphore>,
}

/// Held while a request runs; keeps `agent_auth_requests_in_flight` right however the request
/// ends (including cancellation).
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    in_flight: metrics::Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}

impl Limiter {
    pub fn new(max_concurrent_requests: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
        }
    }

    /// A permit, or `None` (counted in `agent_auth_requests_shed_total`) when the limit is
    /// reached.
    pub fn try_acquire(&self) -> Option<Permit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let in_flight = crate::metrics::requests_in_flight();
                in_flight.increment(1.0);
                Some(Permit {
                    _permit: permit,
                    in_flight,
                })
            }
            Err(_) => {
                metrics::counter!(REQUESTS_SHED).increment(1);
                None
            }
        }
    }
}
