//! Which attempt of an EC2 call failed, so that errors can say so.
//!
//! The SDK's retry loop runs inside one `send()`; it does not report how many attempts
//! it made. An interceptor reads the orchestrator's attempt counter when each call
//! ends and leaves it in a thread-local, which the error path reads right after the
//! `await` (the end of a call and the code after its `await` run in the same poll, on
//! the same thread). Each failed attempt that will be retried is logged.

use aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use std::cell::Cell;

thread_local! {
    /// (attempts made, attempts allowed) by the last EC2 call that finished on this
    /// thread.
    static LAST_ATTEMPTS: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Counts attempts; `max` is the most the retry strategy allows.
#[derive(Debug)]
pub(crate) struct AttemptCounter {
    pub max: u32,
}

fn attempts(cfg: &ConfigBag) -> u32 {
    cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts())
}

impl Intercept for AttemptCounter {
    fn name(&self) -> &'static str {
        "AttemptCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Err(e)) = context.output_or_error() {
            let op = cfg.load::<Metadata>().map_or("EC2 call", |m| m.name());
            tracing::info!(
                "{op}: attempt {} of up to {} failed: {e}",
                attempts(cfg),
                self.max
            );
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        _: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let n = attempts(cfg);
        let max = self.max;
        LAST_ATTEMPTS.with(|l| l.set((n.min(max), max)));
        Ok(())
    }
}

/// How the last EC2 call on this thread went, for its error message: "attempt 1 of
/// up to 10", "after 10 attempts"; empty when unknown.
pub(crate) fn describe_last() -> String {
    match LAST_ATTEMPTS.with(Cell::get) {
        (0, _) => String::new(),
        (n, max) if n >= max && n > 1 => format!(" (after {n} attempts, the --max-attempts limit)"),
        (1, max) => format!(" (attempt 1 of up to {max}: not retried)"),
        (n, max) => format!(" (attempt {n} of up to {max}: retrying stopped)"),
    }
}
