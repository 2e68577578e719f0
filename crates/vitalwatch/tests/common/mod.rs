//! What the binary's integration tests share: starting `vitalwatch run` as a real process
//! on a free loopback port, running the binary, and plain HTTP requests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use vitalwatch_connectors::catalog::SqliteCatalog;
use vitalwatch_connectors::store::AlertStore;

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cmd` (a `vitalwatch run` listening on `port`) quietly and waits until it
/// accepts connections.
pub fn serve(mut cmd: Command, port: u16) -> Child {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "vitalwatch run");
    child
}

/// Polls `f` until it holds; fails the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to 30 s) until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the built binary with these arguments.
pub fn vitalwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args)
        .output()
        .unwrap()
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn os(p: impl AsRef<Path>) -> String {
    p.as_ref().to_str().expect("UTF-8 path").to_owned()
}

pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// `vitalwatch run` without the simulator on a free `port`, with this data directory and
/// config file (if any), until killed.
pub fn spawn_run(data: &Path, config: Option<&Path>, port: u16) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalwatch"));
    cmd.args([
        "run",
        "--no-simulator",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    cmd.args(["--data", &os(data)]);
    if let Some(c) = config {
        cmd.args(["--config", &os(c)]);
    }
    serve(cmd, port)
}

/// `SELECT` over a data directory's warehouse, as CSV without the header.
pub fn sql(data: &Path, q: &str) -> String {
    let o = vitalwatch(&["query", "--format", "csv", "--data", &os(data), q]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.split_once('\n')
        .map_or(out.clone(), |(_, rest)| rest.trim().to_owned())
}

/// The alert log's (alert id, event, time) keys, asserting each appears once.
pub fn alert_log(data: &Path) -> BTreeSet<String> {
    let log = std::fs::read_to_string(data.join("alerts.jsonl")).unwrap();
    let mut keys = BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = format!(
            "{}:{}:{}",
            v["alert_id"], v["event"], v["input_message_time"]
        );
        assert!(keys.insert(key.clone()), "notified twice: {key}");
    }
    keys
}

/// What a replay left behind, to compare a crashed-and-resumed replay with a clean one.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub vitals: String,
    pub distinct_vitals: String,
    pub alert_rows: String,
    pub distinct_alert_rows: String,
    pub dead_letters: String,
    pub unclassified: String,
    pub catalog_alerts: usize,
    pub log: BTreeSet<String>,
}

pub fn outcome(data: &Path) -> Outcome {
    let catalog = SqliteCatalog::open(&data.join("catalog.sqlite")).unwrap();
    Outcome {
        vitals: sql(data, "SELECT count(*) FROM vitals"),
        distinct_vitals: sql(
            data,
            "SELECT count(*) FROM (SELECT DISTINCT patient_id, device_id, vital, observed_at, value FROM vitals)",
        ),
        alert_rows: sql(data, "SELECT count(*) FROM alerts"),
        distinct_alert_rows: sql(
            data,
            "SELECT count(*) FROM (SELECT DISTINCT alert_id, event, input_message_time FROM alerts)",
        ),
        dead_letters: sql(data, "SELECT count(*) FROM dead_letters"),
        unclassified: sql(data, "SELECT count(*) FROM unclassified"),
        catalog_alerts: catalog.alerts(false, usize::MAX >> 1).unwrap().len(),
        log: alert_log(data),
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// An HTTP server (the receiving end of a webhook or an SNS http subscription) on a free
/// port answering its n-th request with `statuses[n]` (the last
/// one from then on) and recording every request.
pub fn receiver(statuses: Vec<u16>) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    receiver_with(move |n, _| statuses[(n - 1).min(statuses.len() - 1)])
}

/// An HTTP server like [`receiver`] answering each request with `status(n, request)`
/// (`n` counts from 1).
pub fn receiver_with(
    status: impl Fn(usize, &Received) -> u16 + Send + 'static,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let r = Received {
                headers,
                body: String::from_utf8(body).unwrap(),
            };
            let status = {
                let mut g = seen.lock().unwrap();
                g.push(r.clone());
                status(g.len(), &r)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (port, got)
}

/// A request to the run on `port` (blocking); the status and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(request(
            SocketAddr::from(([127, 0, 0, 1], port)),
            method,
            path,
            body,
        ))
}

/// Posts one canonical reading of `patient` observed now (`vitals` a JSON object) to the
/// run on `port`, asserting it was accepted.
pub fn post_reading(port: u16, patient: &str, vitals: &str) {
    let body = format!(
        r#"{{"patient_id": "{patient}", "observed_at": "{}", "vitals": {vitals}}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    let (status, text) = http(port, "POST", "/v1/readings", &body);
    assert_eq!(status, 202, "{text}");
}

/// Imports the classic patients (and with `thresholds`, the classic table) into the
/// catalog of `data` under `config`.
pub fn import_classic(config: &Path, data: &Path, thresholds: bool) {
    let (c, d) = (os(config), os(data));
    let mut files = vec![("patients", "../../data/patients_information.csv")];
    if thresholds {
        files.push(("thresholds", "../../data/threshold_ref.csv"));
    }
    for (what, file) in files {
        let o = vitalwatch(&[what, "import", "--config", &c, "--data", &d, file]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
