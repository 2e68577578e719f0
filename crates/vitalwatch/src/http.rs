//! The HTTP source and API: readings in, health, metrics and alert acknowledgement.
//!
//! `POST /v1/readings` decodes its body (one JSON object, an array, or NDJSON, classic or
//! canonical) with the core codecs, hands accepted observations to the engine, and turns
//! rejected records into dead letters. It answers 202 when every record was accepted and
//! 400 when any was rejected, with the count accepted and a reason per rejected record
//! (the accepted ones are processed either way).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_core::codec::{InputFormat, decode_record, split_body};
use vitalwatch_core::model::DeadLetter;

use crate::pipeline::{IngestMsg, PipelineHandle, wall_now};

#[derive(Debug, Deserialize)]
struct ReadingsQuery {
    #[serde(default)]
    format: InputFormat,
}

#[derive(Debug, Serialize)]
struct Rejected {
    record: usize,
    reason: String,
}

#[derive(Debug, Serialize)]
struct IngestReply {
    accepted: usize,
    rejected: Vec<Rejected>,
}

async fn post_readings(
    State(h): State<PipelineHandle>,
    Query(q): Query<ReadingsQuery>,
    body: Bytes,
) -> Response {
    let now = wall_now();
    let records = split_body(&body);
    h.metrics.received.fetch_add(records.len() as u64, Relaxed);
    let mut accepted = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    let mut dead = Vec::new();
    for r in &records {
        match decode_record(r.bytes, q.format, now) {
            Ok(o) => accepted.push(o),
            Err(e) => {
                let reason = e.to_string();
                dead.push(DeadLetter::new(
                    now,
                    format!("http:record {}", r.index),
                    reason.clone(),
                    r.bytes,
                ));
                rejected.push(Rejected {
                    record: r.index,
                    reason,
                });
            }
        }
    }
    if records.is_empty() {
        rejected.push(Rejected {
            record: 0,
            reason: "empty body: send a JSON object, a JSON array or newline-delimited JSON".into(),
        });
        dead.push(DeadLetter::new(
            now,
            "http".into(),
            "empty body".into(),
            b"",
        ));
    }
    h.dead_letters_async(dead).await;
    let n = accepted.len();
    if n > 0
        && h.ingest
            .send_async(IngestMsg::Batch(accepted))
            .await
            .is_err()
    {
        return shutting_down();
    }
    let status = if rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        axum::Json(IngestReply {
            accepted: n,
            rejected,
        }),
    )
        .into_response()
}

/// 503: the pipeline stopped taking input (Ctrl-C or shutdown in progress).
fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "pipeline is shutting down\n",
    )
        .into_response()
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
    let path = h.catalog_path.clone();
    let r = tokio::task::spawn_blocking(move || {
        SqliteCatalog::open(&path).and_then(|c| c.alerts(!q.all, q.limit.min(10_000)))
    })
    .await;
    match r {
        Ok(Ok(alerts)) => {
            let list: Vec<_> = alerts.into_iter().map(|a| a.latest).collect();
            axum::Json(list).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize, Default)]
struct AckBody {
    #[serde(default)]
    by: Option<String>,
}

async fn ack_alert(
    State(h): State<PipelineHandle>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let by = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<AckBody>(&body) {
            Ok(b) => b.by,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("invalid body: {e}; expected {{\"by\":\"name\"}}\n"),
                )
                    .into_response();
            }
        }
    };
    let Some(by) = by.filter(|b| !b.trim().is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "say who acknowledges: {\"by\":\"nurse.jones\"}\n",
        )
            .into_response();
    };
    let (tx, rx) = flume::bounded(1);
    if h.ingest
        .send_async(IngestMsg::Ack {
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
        Ok(Ok(ev)) => axum::Json(ev).into_response(),
        Ok(Err(msg)) if msg.contains("already") => {
            (StatusCode::CONFLICT, format!("{msg}\n")).into_response()
        }
        Ok(Err(msg)) => (StatusCode::NOT_FOUND, format!("{msg}\n")).into_response(),
        Err(_) => shutting_down(),
    }
}

/// The router, for a server or a test.
pub fn router(handle: PipelineHandle, max_body: usize) -> Router {
    Router::new()
        .route("/v1/readings", post(post_readings))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}/ack", post(ack_alert))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(handle)
}

/// Binds the listener (so the caller knows the port at once) and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    handle: PipelineHandle,
    max_body: usize,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(handle, max_body);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
            .map_err(anyhow::Error::from)
    });
    Ok((local, task))
}
