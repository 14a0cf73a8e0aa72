//! One deadline per mutating request (`pipeline.deadline_ms`, counted from the start of the
//! pipeline). Every wait inside it — a pooled connection, the wallet lock, a transaction retry,
//! each statement — is bounded by the time left, and the configuration check at start makes
//! the deadline shorter than the in-flight marker's lease: a request gives up before its
//! marker lapses, so no twin is let in while the first is still working (and if one were, the
//! key's primary key would refuse the second answer).

use std::future::Future;
use std::time::{Duration, Instant};

/// The request's deadline passed while it waited for `what`.
#[derive(Debug, thiserror::Error)]
#[error("request deadline passed while waiting for {what}")]
pub struct DeadlinePassed {
    pub what: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whole milliseconds left, at least 1 (Postgres reads a timeout of 0 as "no timeout").
    pub fn remaining_ms(&self) -> u64 {
        u64::try_from(self.remaining().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Runs `future` until the deadline.
    pub async fn bound<T>(
        &self,
        what: &'static str,
        future: impl Future<Output = T>,
    ) -> Result<T, DeadlinePassed> {
        tokio::time::timeout_at(self.at.into(), future)
            .await
            .map_err(|_| DeadlinePassed { what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_gives_up_at_the_deadline() {
        let deadline = Deadline::after(Duration::from_millis(20));
        let started = Instant::now();
        let result = deadline
            .bound("a sleep", tokio::time::sleep(Duration::from_secs(5)))
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(deadline.remaining(), Duration::ZERO);
        assert_eq!(deadline.remaining_ms(), 1);
    }
}
