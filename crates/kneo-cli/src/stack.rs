//! The kneo stack's flags, which `kneo request` and `kneo proxy` share, and
//! the [`ClientLayer`] they configure.

use std::time::Duration;

use clap::Args;
use kneo::idempotency::IdempotencyKeyLayer;
use kneo::retry::RetryLayer;
use kneo::ClientLayer;

use crate::secs::{non_negative_secs, positive_secs};

/// How each request goes through the kneo stack.
#[derive(Debug, Args)]
pub(crate) struct StackArgs {
    /// Total attempts per request, the first included (1 = no retry).
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_attempts: u32,

    /// The limit on each attempt, in seconds (fractions allowed): up to the
    /// response head for the proxy, the body included for a request.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, default_value = "30", value_parser = positive_secs)]
    pub(crate) timeout: Duration,

    /// An overall limit on all attempts and waits of one request, in seconds.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = positive_secs)]
    pub(crate) deadline: Option<Duration>,

    /// The longest Retry-After waited for, in seconds; a longer hint ends
    /// retrying (the proxy hands the upstream's answer to its caller).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, default_value = "60", value_parser = non_negative_secs)]
    pub(crate) max_retry_after: Duration,

    /// Do not stamp an Idempotency-Key on POST and PATCH (one that may have
    /// been applied is then not re-sent).
    #[arg(long)]
    pub(crate) no_idempotency_key: bool,
}

impl StackArgs {
    /// The stack the flags ask for.
    pub(crate) fn layer(&self) -> ClientLayer {
        let mut retry = RetryLayer::new()
            .max_attempts(self.max_attempts)
            .attempt_timeout(self.timeout)
            .max_retry_after(self.max_retry_after);
        if let Some(deadline) = self.deadline {
            retry = retry.deadline(deadline);
        }
        let mut layer = ClientLayer::new().retry(retry);
        if self.no_idempotency_key {
            layer = layer.idempotency(IdempotencyKeyLayer::new().methods([]));
        }
        layer
    }
}
