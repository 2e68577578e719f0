//! What the HTTP notifiers (webhooks, Amazon SNS) share: one blocking client per notifier
//! and one way to send a request and read its answer.

use std::time::Duration as StdDuration;

use vitalwatch_core::model::Duration;

use super::NotifyError;

/// A client whose every request may take `timeout`; every status is an answer to
/// classify, not an error.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(StdDuration::from_micros(
            timeout.micros().max(1) as u64
        )))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Sends `req` with `body`; the status and up to `limit` bytes of the answer. A request
/// that gets no answer (refused, timed out, TLS) is a transient error named after `what`.
pub(crate) fn send(
    req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: &[u8],
    limit: u64,
    what: &str,
) -> Result<(u16, String), NotifyError> {
    let mut resp = req
        .send(body)
        .map_err(|e| NotifyError::Transient(format!("{what}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_string()
        .unwrap_or_default();
    Ok((status, text))
}
