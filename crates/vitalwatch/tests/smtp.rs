//! E-mail delivery against real SMTP servers on loopback: aiosmtpd, started by
//! `scripts/services.sh`, plain on 127.0.0.1:2525 and STARTTLS-only on 127.0.0.1:2587,
//! each keeping every message in a Maildir that these tests read back. Every test sends
//! to addresses of its own, so tests run side by side on the shared servers.
//!
//! What they show: an alert raised by `run` is e-mailed once per notifier with the classic
//! subject and fields, its idempotency key as `Message-ID`, personal data only where the
//! notifier's privacy setting allows it, and not again after a restart; `notify test`
//! reaches a STARTTLS server that presents a certificate from the configured CA, and
//! fails clearly when the certificate cannot be verified or the server is down.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, os, spawn_run, vitalwatch, wait_for};

fn services() -> PathBuf {
    std::env::var_os("VITALWATCH_SERVICES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/vitalwatch-services")
        })
        .join("smtp")
}

fn require(port: u16) {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "no SMTP server on 127.0.0.1:{port}: start it with `bash scripts/services.sh`"
    );
}

/// An address no other test or run uses.
fn address(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}@hospital.test", std::process::id())
}

/// One received message: its headers (names lower-cased) and its body, decoded from
/// quoted-printable where it was.
#[derive(Debug)]
struct Mail {
    headers: Vec<(String, String)>,
    body: String,
}

impl Mail {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

fn parse(raw: &str) -> Mail {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_lowercase(), v.trim().to_owned()));
        }
    }
    let qp = headers.iter().any(|(k, v)| {
        k == "content-transfer-encoding" && v.eq_ignore_ascii_case("quoted-printable")
    });
    let body = if qp {
        body.replace("=\n", "").replace("=3D", "=")
    } else {
        body.to_owned()
    };
    Mail { headers, body }
}

/// The messages in `maildir` addressed to `to`, waiting until `n` arrived (and a moment
/// longer, so a duplicate would be seen too).
fn mail_to(maildir: &Path, to: &str, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(maildir.join("new")) {
            for e in entries.flatten() {
                let raw = std::fs::read_to_string(e.path()).unwrap_or_default();
                let m = parse(&raw);
                if m.header("to").contains(to) {
                    found.push(m);
                }
            }
        }
        if found.len() >= n {
            std::thread::sleep(Duration::from_millis(500));
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} messages to {to} in {}",
            found.len(),
            maildir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the catalog records a delivery to `notifier`.
fn wait_recorded(config: &Path, data: &Path, notifier: &str) {
    let what = format!("a delivery to {notifier} on record");
    wait_for(&what, Duration::from_secs(20), || {
        let o = vitalwatch(&[
            "alerts",
            "deliveries",
            "--notifier",
            notifier,
            "--format",
            "csv",
            "--config",
            &os(config),
            "--data",
            &os(data),
        ]);
        String::from_utf8_lossy(&o.stdout).contains(",delivered,")
    });
}

/// An alert is e-mailed once to each notifier: the classic subject and fields to the
/// ward, ward and patient id only to the `minimal` channel, the event's idempotency key
/// as Message-ID; a restart sends nothing again.
#[test]
fn an_alert_is_emailed_once_per_notifier_with_the_classic_fields_and_its_privacy() {
    require(2525);
    let maildir = services().join("plain");
    let dir = tempfile::tempdir().unwrap();
    let (ward, pager, brief) = (address("ward5"), address("pager"), address("brief"));
    let config = dir.path().join("mail.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[rules]
profile = "classic"

[alerts]
console = false

[[notifiers]]
type = "smtp"
name = "ward"
port = 2525
tls = "none"
from = "vitalwatch@hospital.test"
to = ["{ward}"]

[[notifiers]]
type = "smtp"
name = "pager"
port = 2525
tls = "none"
to = ["{pager}"]
privacy = "minimal"

[[notifiers]]
type = "smtp"
name = "brief"
port = 2525
tls = "none"
to = ["{brief}"]
privacy = "minimal"
subject_template = "{{{{ priority | upper }}}} {{{{ alert_message }}}}, ward {{{{ admitted_ward }}}}"
body_template = "Patient {{{{ patient_id }}}} needs review ({{{{ event }}}} at {{{{ input_message_time }}}})."
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    common::import_classic(&config, &data, false);

    let port = free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    common::post_reading(port, "5", r#"{"heart_rate": 130}"#);
    let to_ward = mail_to(&maildir, &ward, 1);
    let to_pager = mail_to(&maildir, &pager, 1);
    let to_brief = mail_to(&maildir, &brief, 1);
    // The kill comes once each delivery is on record (the alert thread writes delivery
    // records up to a second after the server's answer): a kill before that would
    // rightly send the mail again on restart (at least once), which is not what the
    // restart below checks.
    for notifier in ["ward", "pager", "brief"] {
        wait_recorded(&config, &data, notifier);
    }
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(to_ward.len(), 1, "one alert, one message");
    assert_eq!(to_pager.len(), 1);

    let log = std::fs::read_to_string(data.join("alerts.jsonl")).unwrap();
    let event: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let alert_id = event["alert_id"].as_str().unwrap();

    let m = &to_ward[0];
    assert_eq!(m.header("subject"), "Health Alert: Patient- Pam");
    assert!(m.header("from").contains("vitalwatch@hospital.test"));
    assert!(
        m.header("message-id")
            .starts_with(&format!("<{alert_id}.triggered."))
            && m.header("message-id").ends_with("@vitalwatch>"),
        "the idempotency key is the Message-ID: {}",
        m.header("message-id")
    );
    for field in [
        "patientname: Pam",
        "age: 72",
        "patientaddress: ABC test Address",
        "phone_number: 4982739282",
        "admitted_ward: 5",
        "heartBeat: 130",
        "alert_message: Higher Heart Rate than Normal",
        &format!("alert_id: {alert_id}"),
    ] {
        assert!(m.body.contains(field), "{field:?} missing:\n{}", m.body);
    }

    let p = &to_pager[0];
    assert_eq!(p.header("subject"), "Health Alert: Patient- 5");
    assert_eq!(p.header("message-id"), m.header("message-id"));
    assert!(p.body.contains("admitted_ward: 5") && p.body.contains("patient_id: 5"));
    for personal in ["Pam", "ABC test", "4982739282", "\nage:"] {
        assert!(
            !p.body.contains(personal),
            "{personal} left the hospital:\n{}",
            p.body
        );
    }

    // Templates: the notifier's own subject and body, over the fields its privacy allows.
    assert_eq!(
        to_brief[0].header("subject"),
        "MEDIUM Higher Heart Rate than Normal, ward 5"
    );
    assert!(
        to_brief[0]
            .body
            .starts_with("Patient 5 needs review (triggered at 20"),
        "{}",
        to_brief[0].body
    );

    // A restart resumes from each notifier's cursor: nothing is sent again.
    let port = free_port();
    let mut run = spawn_run(&data, Some(&config), port);
    std::thread::sleep(Duration::from_secs(2));
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(
        mail_to(&maildir, &ward, 1).len(),
        1,
        "not sent again after a restart"
    );
}

/// `notify test` over STARTTLS: sent when the server's certificate comes from the
/// configured CA, refused (and said why) when it cannot be verified; a server that is
/// down is a clear, transient error.
#[test]
fn notify_test_sends_over_starttls_and_refuses_an_unverified_server() {
    require(2587);
    let smtp = services();
    let dir = tempfile::tempdir().unwrap();
    let to = address("tls");
    let config = |ca: &str, port: u16| {
        let path = dir.path().join(format!("tls-{port}-{}.toml", ca.len()));
        std::fs::write(
            &path,
            format!(
                "[[notifiers]]\ntype = \"smtp\"\nname = \"oncall\"\nhost = \"127.0.0.1\"\nport = {port}\n\
                 tls = \"starttls\"\nca_file = \"{ca}\"\nto = [\"{to}\"]\n"
            ),
        )
        .unwrap();
        path
    };
    let cert = os(smtp.join("ca.pem"));
    let test = |cfg: &Path| vitalwatch(&["notify", "test", "oncall", "--config", &os(cfg)]);

    let o = test(&config(&cert, 2587));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("oncall: sent; the server answered: 250"),
        "{out}"
    );
    let got = mail_to(&smtp.join("tls"), &to, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("subject"),
        "Health Alert: Patient- Test Patient"
    );
    assert!(got[0].body.contains("vitalwatch test notification"));

    // The same server without its CA: the certificate is not trusted, nothing is sent.
    let o = test(&config("", 2587));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    assert_eq!(mail_to(&smtp.join("tls"), &to, 1).len(), 1);

    // Nobody listening: a transient error, named as such.
    let o = test(&config(&cert, free_port()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("transient"), "{err}");
}

/// The SMTP server is down for 30 s while alerts fire: once it is back, every alert is
/// e-mailed, none twice, and the failed attempts are on record.
#[test]
fn alerts_raised_while_the_mail_server_is_down_are_sent_once_when_it_returns() {
    let python = services().join("venv/bin/python");
    assert!(
        python.is_file(),
        "aiosmtpd is not installed: run `bash scripts/services.sh`"
    );
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let port = free_port();
    let server = || {
        let mut c = std::process::Command::new(&python);
        c.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox", &os(&maildir)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    };
    let mut smtp = server();
    let to = address("outage");
    let config = dir.path().join("mail.toml");
    std::fs::write(
        &config,
        format!(
            "[rules]\nprofile = \"classic\"\n[alerts]\nconsole = false\n\
             [[notifiers]]\ntype = \"smtp\"\nname = \"mail\"\nport = {port}\ntls = \"none\"\nto = [\"{to}\"]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (c, d) = (os(&config), os(&data));
    common::import_classic(&config, &data, false);
    let http = free_port();
    let mut run = spawn_run(&data, Some(&config), http);

    smtp.kill().unwrap();
    smtp.wait().unwrap();
    for patient in ["1", "2", "5"] {
        common::post_reading(http, patient, r#"{"heart_rate": 130}"#);
    }
    std::thread::sleep(Duration::from_secs(30));
    let mut smtp = server();
    // The retry after the outage comes at most 30 s (the backoff cap) after the server
    // is back; the other two follow at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || {
        std::fs::read_dir(maildir.join("new"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    while count() < 3 {
        assert!(
            Instant::now() < deadline,
            "{} of 3 alerts e-mailed after the outage",
            count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    run.kill().unwrap();
    run.wait().unwrap();
    smtp.kill().unwrap();
    smtp.wait().unwrap();

    let got = mail_to(&maildir, &to, 3);
    assert_eq!(got.len(), 3, "each alert once");
    let ids: std::collections::BTreeSet<&str> =
        got.iter().map(|m| m.header("message-id")).collect();
    assert_eq!(ids.len(), 3, "three alerts, three Message-IDs");
    let o = vitalwatch(&[
        "alerts",
        "deliveries",
        "--notifier",
        "mail",
        "--format",
        "csv",
        "--config",
        &c,
        "--data",
        &d,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let retries = out.lines().filter(|l| l.contains(",retrying,")).count();
    assert!(retries >= 5, "the failed attempts are recorded: {out}");
    // Delivered in one batch or several (up to `connections` at a time): the delivered
    // records cover the three events, each once.
    let covered: u64 = out
        .lines()
        .filter(|l| l.contains(",delivered,"))
        .map(|l| {
            let f: Vec<u64> = l
                .split(',')
                .skip(2)
                .take(2)
                .map(|x| x.parse().unwrap())
                .collect();
            f[1] - f[0] + 1
        })
        .sum();
    assert_eq!(covered, 3, "{out}");
}
