//! Amazon SNS delivery against moto's SNS emulator on 127.0.0.1:5000 (started by
//! `scripts/services.sh`; reset by each test), with an http subscription to a receiver
//! of the test's own: moto delivers each published message to it as SNS does.
//!
//! What it shows: an alert raised by `run` is published once, signed (SigV4), with the
//! classic subject and no personal data under the default `minimal` privacy; a topic
//! that does not exist is a permanent error that `notify test` names.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{os, receiver, serve};
use vitalwatch_connectors::notify::sns::{Credentials, form_encode, sign_v4};

const MOTO: &str = "127.0.0.1:5000";

/// One signed SNS Query API call to the emulator; the XML answer.
fn sns(params: &[(&str, &str)]) -> String {
    let body = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let creds = Credentials {
        access_key: "testing".into(),
        secret_key: "testing".into(),
        session_token: None,
    };
    let ct = "application/x-www-form-urlencoded; charset=utf-8";
    let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let signed = sign_v4(
        "POST",
        "/",
        "",
        &[("content-type", ct), ("host", MOTO)],
        body.as_bytes(),
        &creds,
        "us-east-1",
        "sns",
        &date,
    );
    let mut req = ureq::post(format!("http://{MOTO}/")).header("content-type", ct);
    for (k, v) in &signed {
        req = req.header(k, v);
    }
    req.send(body.as_bytes())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

fn between<'a>(xml: &'a str, tag: &str) -> &'a str {
    let s = xml.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    &xml[s..s + xml[s..].find(&format!("</{tag}>")).unwrap()]
}

/// `vitalwatch` with the emulator's credentials in its environment.
fn with_aws(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalwatch"));
    c.args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN");
    c
}

#[test]
fn an_alert_is_published_to_sns_once_without_personal_data() {
    assert!(
        std::net::TcpStream::connect(MOTO).is_ok(),
        "no SNS emulator on {MOTO}: start it with `bash scripts/services.sh`"
    );
    ureq::post(format!("http://{MOTO}/moto-api/reset"))
        .send_empty()
        .unwrap();
    let (hook, got) = receiver(vec![200]);
    let arn = between(
        &sns(&[("Action", "CreateTopic"), ("Name", "ward-5-alerts")]),
        "TopicArn",
    )
    .to_owned();
    sns(&[
        ("Action", "Subscribe"),
        ("TopicArn", &arn),
        ("Protocol", "http"),
        ("Endpoint", &format!("http://127.0.0.1:{hook}/sns")),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sns.toml");
    std::fs::write(
        &config,
        format!(
            "[rules]\nprofile = \"classic\"\n[alerts]\nconsole = false\n\
             [[notifiers]]\ntype = \"sns\"\nname = \"ward-sms\"\ntopic_arn = \"{arn}\"\n\
             endpoint_url = \"http://{MOTO}\"\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (c, d) = (os(&config), os(&data));
    common::import_classic(&config, &data, false);

    let port = common::free_port();
    let mut run = serve(
        with_aws(&[
            "run",
            "--no-simulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
            &c,
            "--data",
            &d,
        ]),
        port,
    );
    common::post_reading(port, "5", r#"{"heart_rate": 130}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing published to {arn}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    run.kill().unwrap();
    run.wait().unwrap();

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "published once: {got:?}");
    let n: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(n["Type"], "Notification");
    assert_eq!(n["TopicArn"], arn.as_str());
    assert_eq!(n["Subject"], "Health Alert: Patient- 5");
    let message = n["Message"].as_str().unwrap();
    assert!(
        message.contains("alert_message: Higher Heart Rate than Normal"),
        "{message}"
    );
    assert!(message.contains("admitted_ward: 5"), "{message}");
    for personal in ["Pam", "ABC test", "4982739282"] {
        assert!(
            !message.contains(personal),
            "{personal} left the hospital: {message}"
        );
    }
    // The idempotency key travels as message attribute `vitalwatch-idempotency-key`
    // (moto validates it on Publish but leaves attributes out of http notifications;
    // the request body is checked in `notify::sns::tests`).

    // A topic that does not exist: permanent, and said so.
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        format!(
            "[[notifiers]]\ntype = \"sns\"\nname = \"gone\"\n\
             topic_arn = \"arn:aws:sns:us-east-1:123456789012:no-such-topic\"\n\
             endpoint_url = \"http://{MOTO}\"\n"
        ),
    )
    .unwrap();
    let o = with_aws(&["notify", "test", "gone", "--config", &os(&missing)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permanent") && err.contains("NotFound"),
        "{err}"
    );
    let o = with_aws(&["notify", "test", "ward-sms", "--config", &c])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("ward-sms: sent; the server answered: MessageId "),
        "{out}"
    );
}
