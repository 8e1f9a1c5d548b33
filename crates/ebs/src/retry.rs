//! Retries with per-attempt timeouts, exponential backoff and full jitter.

use crate::api::{ApiError, ApiResult, ErrorKind};
use std::future::Future;
use std::time::{Duration, Instant};

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The first backoff ceiling; it doubles with each attempt.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
    /// Each attempt is abandoned after this long.
    pub attempt_timeout: Duration,
    /// "Snapshot not found" is retried for this long after StartSnapshot: the
    /// service is eventually consistent for about two minutes.
    pub not_found_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
            // A 512 KiB put takes about 100 ms on AWS; a minute means something is wrong.
            attempt_timeout: Duration::from_secs(60),
            not_found_grace: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt` (1-based count of failures so far).
    pub fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max_delay);
        Duration::from_nanos(fastrand::u64(0..=ceiling.as_nanos() as u64))
    }

    /// Runs `call` until it succeeds, fails for good, or attempts run out.
    /// `since` is when the snapshot was started, for the not-found grace period.
    /// Returns the result and the number of attempts made.
    pub async fn run<T, F, Fut>(
        &self,
        since: Option<Instant>,
        stop: &(dyn Fn() -> bool + Sync),
        mut call: F,
    ) -> (ApiResult<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match tokio::time::timeout(self.attempt_timeout, call()).await {
                Ok(Ok(v)) => return (Ok(v), attempt),
                Ok(Err(e)) => e,
                Err(_) => ApiError::new(
                    ErrorKind::Timeout,
                    None,
                    format!("no answer within {:?}", self.attempt_timeout),
                ),
            };
            let young = since.is_some_and(|t| t.elapsed() < self.not_found_grace);
            let retryable = err.kind.is_transient() || (err.kind == ErrorKind::NotFound && young);
            if !retryable || attempt >= self.max_attempts || stop() {
                return (Err(err), attempt);
            }
            tracing::debug!(attempt, error = %err, "retrying");
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let (r, attempts) = fast()
            .run(None, &|| false, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(ApiError::new(
                        ErrorKind::Throttled,
                        Some("RequestThrottledException"),
                        "slow down",
                    ))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!((r.unwrap(), attempts), (7, 4));
    }

    #[tokio::test]
    async fn access_denied_is_never_retried() {
        let (r, attempts) = fast()
            .run(None, &|| false, || async {
                Err::<(), _>(ApiError::new(ErrorKind::AccessDenied, None, "no"))
            })
            .await;
        assert_eq!(
            (r.unwrap_err().kind, attempts),
            (ErrorKind::AccessDenied, 1)
        );
    }

    #[tokio::test]
    async fn not_found_is_retried_only_while_the_snapshot_is_young() {
        let nf =
            || async { Err::<(), _>(ApiError::new(ErrorKind::NotFound, None, "no such snapshot")) };
        let (_, young) = fast().run(Some(Instant::now()), &|| false, nf).await;
        assert_eq!(young, 10);
        let old = Instant::now() - Duration::from_secs(600);
        let (_, old_attempts) = fast().run(Some(old), &|| false, nf).await;
        assert_eq!(old_attempts, 1);
    }

    #[tokio::test]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_millis(20),
            ..fast()
        };
        let (r, attempts) = policy
            .run(None, &|| false, || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok(1)
            })
            .await;
        assert_eq!((r.unwrap(), attempts), (1, 2));
    }

    #[test]
    fn backoff_grows_but_stays_under_the_ceiling() {
        let p = RetryPolicy::default();
        for n in 0..40 {
            assert!(p.backoff(n) <= p.max_delay);
        }
    }
}
