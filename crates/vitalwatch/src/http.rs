//! The HTTP source and API: readings in, health, metrics and alert acknowledgement.
//!
//! `POST /v1/readings` decodes its body (one JSON object, an array, or NDJSON, classic or
//! canonical) with the core codecs, hands accepted observations to the engine, and turns
//! rejected records into dead letters. It answers 202 when every record was accepted and
//! 400 when any was rejected, with the count accepted and a reason per rejected record
//! (the accepted ones are processed either way). With `?wait=durable` the answer waits
//! for a checkpoint: 202 means every accepted reading and the alert events it caused are
//! durable (alert store committed, warehouse files published); 503 with code
//! `not_durable` means the checkpoint failed and the client should send the batch again.

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vitalwatch_core::codec::InputFormat;
use vitalwatch_core::engine::AckError;
use vitalwatch_core::model::DeadLetter;

use vitalwatch_connectors::source::Outcome;
use vitalwatch_connectors::source::live::{IngestReply, Rejected};

use crate::pipeline::{Control, PipelineHandle};

#[derive(Debug, Deserialize)]
struct ReadingsQuery {
    #[serde(default)]
    format: InputFormat,
    /// `durable`: answer only once the batch is durable.
    #[serde(default)]
    wait: Wait,
}

/// How long `POST /v1/readings` waits before answering.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Wait {
    /// Answer once the batch is queued (the default: lowest latency).
    #[default]
    Accepted,
    /// Answer once the batch is durable.
    Durable,
}

/// Reads a request body up to `max` bytes. Past that, stops reading and returns the
/// first bytes (up to a dead letter's payload bound) as the error.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, Result<Vec<u8>, String>> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Err(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                let keep = DeadLetter::MAX_PAYLOAD.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(keep)]);
                buf.truncate(DeadLetter::MAX_PAYLOAD);
                return Err(Ok(buf));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn post_readings(
    State(h): State<PipelineHandle>,
    Query(q): Query<ReadingsQuery>,
    max_body: usize,
    body: Body,
) -> Response {
    let body = match read_body(body, max_body).await {
        Ok(b) => b,
        Err(Ok(head)) => {
            // Too big to take, too important to drop: its head is kept as a dead letter.
            let reason = format!(
                "request body over http.max_body_bytes = {max_body} bytes; send smaller batches (the first 64 KiB are kept as a dead letter)"
            );
            if h.source
                .oversize_body(&head, "http", &reason)
                .await
                .is_err()
            {
                return shutting_down();
            }
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(IngestReply {
                    accepted: 0,
                    rejected: vec![Rejected { record: 0, reason }],
                }),
            )
                .into_response();
        }
        Err(Err(reason)) => return error_json(StatusCode::BAD_REQUEST, "bad_body", reason),
    };
    let Ok(reply) = h.source.ingest_body(&body, q.format, "http").await else {
        return shutting_down();
    };
    if q.wait == Wait::Durable {
        let source = h.source.clone();
        let outcome = tokio::task::spawn_blocking(move || source.wait_durable()).await;
        match outcome {
            Ok(Ok(Outcome::Committed)) => {}
            Ok(Ok(Outcome::Failed(why))) => {
                tracing::error!(error = %why, "checkpoint failed; the client is told to send again");
                return error_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_durable",
                    format!(
                        "the readings were accepted but could not be made durable ({why}); send the batch again"
                    ),
                );
            }
            Ok(Err(_)) | Err(_) => return shutting_down(),
        }
    }
    let status = if reply.rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, axum::Json(reply)).into_response()
}

/// Every error has one shape: `{"error": {"code": "...", "message": "..."}}`, where
/// `code` is stable (for programs) and `message` is for people.
fn error_json(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

/// 503: the pipeline stopped taking input (Ctrl-C or shutdown in progress).
fn shutting_down() -> Response {
    error_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "pipeline is shutting down",
    )
}

/// 404 for paths the API does not have.
async fn not_found(uri: axum::http::Uri) -> Response {
    error_json(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint {uri}; see the README for the API"),
    )
}

/// A query string that does not parse.
fn bad_query(e: axum::extract::rejection::QueryRejection) -> Response {
    error_json(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(h): State<PipelineHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    #[serde(default)]
    all: bool,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn list_alerts(State(h): State<PipelineHandle>, Query(q): Query<AlertsQuery>) -> Response {
    let at = h.catalog.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::commands::off_runtime(|| {
            at.open()
                .and_then(|c| Ok(c.alerts(!q.all, q.limit.min(10_000))?))
        })
    })
    .await;
    match r {
        Ok(Ok(alerts)) => {
            let list: Vec<_> = alerts.into_iter().map(|a| a.latest).collect();
            axum::Json(list).into_response()
        }
        Ok(Err(e)) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "catalog", e.to_string()),
        Err(e) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[derive(Debug, Deserialize, Default)]
struct AckBody {
    #[serde(default)]
    by: Option<String>,
}

/// Appends an audit row off the runtime (the store clients block); a failure is logged,
/// the action itself already happened.
async fn audit(h: &PipelineHandle, entry: vitalwatch_connectors::store::AuditEntry) {
    let at = h.catalog.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::commands::off_runtime(|| anyhow::Ok(at.open()?.record_audit(&entry)?))
    })
    .await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::error!("cannot record an audit row: {r:?}");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceBody {
    patient_id: String,
    #[serde(rename = "for")]
    duration: vitalwatch_core::model::Duration,
    by: String,
    reason: String,
}

/// `POST /v1/silences`: holds back a patient's notifications for a while (never a new
/// or escalated high-priority alarm); recorded with who, when and from where.
async fn add_silence(
    State(h): State<PipelineHandle>,
    axum::extract::ConnectInfo(from): axum::extract::ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let b: SilenceBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!(
                    "invalid body: {e}; expected {{\"patient_id\":\"5\",\"for\":\"10m\",\"by\":\"nurse.jones\",\"reason\":\"…\"}}"
                ),
            );
        }
    };
    let at = h.catalog.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::commands::off_runtime(|| {
            crate::commands::silence(
                &at,
                &b.patient_id,
                b.duration,
                &b.by,
                &b.reason,
                &format!("http from {from}"),
            )
        })
    })
    .await;
    match r {
        Ok(Ok(s)) => (StatusCode::CREATED, axum::Json(silence_json(&s))).into_response(),
        Ok(Err(e)) => error_json(StatusCode::BAD_REQUEST, "bad_silence", format!("{e:#}")),
        Err(e) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// A silence as the API shows it.
pub fn silence_json(s: &vitalwatch_connectors::store::Silence) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "patient_id": s.patient_id,
        "starts_at": s.starts_at.to_string(),
        "ends_at": s.ends_at.to_string(),
        "by": s.by,
        "reason": s.reason,
    })
}

/// `GET /v1/silences`: the silences in force.
async fn list_silences(State(h): State<PipelineHandle>) -> Response {
    let at = h.catalog.clone();
    let r = tokio::task::spawn_blocking(move || {
        crate::commands::off_runtime(|| {
            anyhow::Ok(at.open()?.silences(Some(crate::pipeline::wall_now()))?)
        })
    })
    .await;
    match r {
        Ok(Ok(list)) => {
            axum::Json(list.iter().map(silence_json).collect::<Vec<_>>()).into_response()
        }
        Ok(Err(e)) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "catalog",
            format!("{e:#}"),
        ),
        Err(e) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn ack_alert(
    State(h): State<PipelineHandle>,
    axum::extract::ConnectInfo(from): axum::extract::ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let by = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<AckBody>(&body) {
            Ok(b) => b.by,
            Err(e) => {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("invalid body: {e}; expected {{\"by\":\"name\"}}"),
                );
            }
        }
    };
    let Some(by) = by.filter(|b| !b.trim().is_empty()) else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "missing_actor",
            "say who acknowledges: {\"by\":\"nurse.jones\"}",
        );
    };
    let (tx, rx) = flume::bounded(1);
    if h.source
        .control
        .send_async(Control::Ack {
            alert_id: id,
            by,
            reply: tx,
        })
        .await
        .is_err()
    {
        return shutting_down();
    }
    match rx.recv_async().await {
        Ok(Ok(ev)) => {
            audit(
                &h,
                vitalwatch_connectors::store::AuditEntry {
                    at: crate::pipeline::wall_now(),
                    actor: ev.acknowledged_by.clone().unwrap_or_default(),
                    action: "alert acknowledged".into(),
                    subject: ev.alert_id.to_string(),
                    detail: format!("patient {} via http from {from}", ev.patient_id),
                },
            )
            .await;
            axum::Json(ev).into_response()
        }
        Ok(Err(e @ AckError::AlreadyAcknowledged(_))) => {
            error_json(StatusCode::CONFLICT, "already_acknowledged", e.to_string())
        }
        Ok(Err(e @ AckError::NotActive(_))) => {
            error_json(StatusCode::NOT_FOUND, "not_active", e.to_string())
        }
        Err(_) => shutting_down(),
    }
}

/// The router, for a server or a test. `readings`: the http source's body limit, or
/// `None` when no http source is configured (then `POST /v1/readings` answers 404).
pub fn router(handle: PipelineHandle, readings: Option<usize>) -> Router {
    let max_body = readings.unwrap_or(64 * 1024);
    let mut router = Router::new();
    if readings.is_some() {
        router = router.route(
            "/v1/readings",
            post(
                move |h: State<PipelineHandle>,
                      q: Result<Query<ReadingsQuery>, QueryRejection>,
                      body: Body| async move {
                    match q {
                        Ok(q) => post_readings(h, q, max_body, body).await,
                        Err(e) => bad_query(e),
                    }
                },
            ),
        );
    }
    router
        .route(
            "/v1/alerts",
            get(
                |h: State<PipelineHandle>, q: Result<Query<AlertsQuery>, QueryRejection>| async move {
                    match q {
                        Ok(q) => list_alerts(h, q).await,
                        Err(e) => bad_query(e),
                    }
                },
            ),
        )
        .route("/v1/alerts/{id}/ack", post(ack_alert))
        .route("/v1/silences", post(add_silence).get(list_silences))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(handle)
}

/// Binds the listener (so the caller knows the port at once) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    handle: PipelineHandle,
    readings: Option<usize>,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = bind(addr).await?;
    serve_on(listener, handle, readings, cancel)
}

/// Binds the HTTP port: `run` does this before it touches the data directory, so a port
/// in use fails before anything is written.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves on a bound listener until `cancel`.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    handle: PipelineHandle,
    readings: Option<usize>,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let local = listener.local_addr()?;
    let app = router(handle, readings);
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(anyhow::Error::from)
    });
    Ok((local, task))
}
