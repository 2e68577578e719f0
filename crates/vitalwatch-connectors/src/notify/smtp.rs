//! The e-mail notifier: each alert event as one message over SMTP — the classic design's
//! SNS e-mail, sent once per state change instead of every few seconds.
//!
//! Where it sits: an outbox consumer like every notifier. A delivery is a batch of up to
//! `connections` events, sent in parallel over that many pooled SMTP connections (one
//! server round trip costs tens of milliseconds, so one connection alone caps a ward at
//! ~20 messages/s); the events of one patient go over one connection in order, so the
//! all-clear never overtakes its alarm. An event that went out is remembered until its
//! batch is done: a retry after a partial failure never sends it twice. The subject is the classic
//! `Health Alert: Patient- {name}`, the body the classic alert fields; `privacy =
//! "minimal"` keeps name, address, phone and age out of the message (ward and patient id
//! only) for channels that leave the hospital. The event's idempotency key is the
//! message's `Message-ID`: a mail system that sees the same id twice (after a crash
//! between sending and recording the delivery) can drop the second. SMTP 4xx answers and
//! connection failures are transient (retried); 5xx answers are permanent.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration as StdDuration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use serde::{Deserialize, Serialize};
use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::model::Duration;

use super::template::{Template, optional};
use super::{Notifier, NotifyError, OutboxItem, Privacy, body, subject};

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No encryption: only for a relay on the same host or a test server.
    None,
}

/// `[[notifiers]] type = "smtp"`: alert events as e-mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// The notifier's name (its outbox cursor and delivery records are kept under it).
    pub name: String,
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// `starttls`, `implicit` or `none`.
    pub tls: SmtpTls,
    /// A PEM file with a CA certificate to trust besides the public roots (a hospital's
    /// internal CA); `""` for none.
    pub ca_file: String,
    /// User name for SMTP AUTH; `""` for none.
    pub username: String,
    /// The environment variable holding the password (never the password itself).
    pub password_env: String,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
    /// `full` or `minimal`.
    pub privacy: Privacy,
    /// How long one message may take (connect, TLS, send).
    pub timeout: Duration,
    /// SMTP connections used in parallel (1–32): messages per delivery batch.
    pub connections: usize,
    /// The subject as a template (`""`: the classic `Health Alert: Patient- {name}`).
    pub subject_template: String,
    /// The body as a template (`""`: the classic fields, one per line).
    pub body_template: String,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            name: "email".into(),
            host: "127.0.0.1".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            ca_file: String::new(),
            username: String::new(),
            password_env: String::new(),
            from: "vitalwatch@localhost".into(),
            to: Vec::new(),
            privacy: Privacy::Full,
            timeout: Duration::from_secs(10),
            connections: 4,
            subject_template: String::new(),
            body_template: String::new(),
        }
    }
}

impl SmtpSettings {
    /// Everything wrong with these settings, each prefixed with `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.host.trim().is_empty() {
            p.push(format!("{prefix}: an smtp notifier needs a host"));
        }
        if self.to.is_empty() {
            p.push(format!(
                "{prefix}: an smtp notifier needs at least one `to` address"
            ));
        }
        for a in std::iter::once(&self.from).chain(&self.to) {
            if a.parse::<Mailbox>().is_err() {
                p.push(format!("{prefix}: {a:?} is not an e-mail address"));
            }
        }
        if !(1..=32).contains(&self.connections) {
            p.push(format!(
                "{prefix}: connections must be 1 to 32 (is {})",
                self.connections
            ));
        }
        if !self.username.is_empty() && self.password_env.is_empty() {
            p.push(format!(
                "{prefix}: username is set: name the environment variable with the password in password_env"
            ));
        }
        if !self.ca_file.is_empty() && !std::path::Path::new(&self.ca_file).is_file() {
            p.push(format!(
                "{prefix}: ca_file {:?} does not exist",
                self.ca_file
            ));
        }
        p
    }

    /// For people: where it sends (no password).
    pub fn describe(&self) -> String {
        let tls = match self.tls {
            SmtpTls::Starttls => "starttls",
            SmtpTls::Implicit => "tls",
            SmtpTls::None => "plain",
        };
        format!(
            "smtp {}:{} ({tls}) to {}",
            self.host,
            self.port,
            self.to.join(", ")
        )
    }
}

/// Sends alert events as e-mail.
pub struct SmtpNotifier {
    settings: SmtpSettings,
    subject: Option<Template>,
    body: Option<Template>,
    transport: SmtpTransport,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Outbox sequence numbers of the current batch that went out (kept across retries).
    sent: HashSet<u64>,
}

impl std::fmt::Debug for SmtpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpNotifier")
            .field("name", &self.settings.name)
            .field("to", &self.settings.to)
            .finish()
    }
}

impl SmtpNotifier {
    /// A notifier for `settings` (connects on first use and keeps up to `connections`
    /// connections open: a server that is down is a transient delivery error, not a
    /// start-up failure).
    pub fn new(settings: SmtpSettings) -> Result<Self, NotifyError> {
        let bad =
            |e: String| NotifyError::Permanent(format!("smtp notifier {}: {e}", settings.name));
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| bad(format!("from: {e}")))?;
        let to = settings
            .to
            .iter()
            .map(|a| {
                a.parse::<Mailbox>()
                    .map_err(|e| bad(format!("to {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = TlsParameters::builder(settings.host.clone());
        if !settings.ca_file.is_empty() {
            let pem = std::fs::read(&settings.ca_file)
                .map_err(|e| bad(format!("ca_file {}: {e}", settings.ca_file)))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| bad(format!("ca_file {}: {e}", settings.ca_file)))?;
            params = params.add_root_certificate(cert);
        }
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            mode => {
                let p = params.build().map_err(|e| bad(format!("tls: {e}")))?;
                if mode == SmtpTls::Implicit {
                    Tls::Wrapper(p)
                } else {
                    Tls::Required(p)
                }
            }
        };
        let mut b = SmtpTransport::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(StdDuration::from_micros(
                settings.timeout.micros().max(1) as u64,
            )))
            .pool_config(
                PoolConfig::new()
                    .max_size(settings.connections.clamp(1, 32) as u32)
                    .idle_timeout(StdDuration::from_secs(30)),
            );
        if !settings.username.is_empty() {
            let password = std::env::var(&settings.password_env).map_err(|_| {
                bad(format!(
                    "the environment variable {} (password_env) is not set",
                    settings.password_env
                ))
            })?;
            b = b.credentials(Credentials::new(settings.username.clone(), password));
        }
        let subject = optional(&settings.subject_template, settings.privacy).map_err(&bad)?;
        let body = optional(&settings.body_template, settings.privacy).map_err(&bad)?;
        Ok(SmtpNotifier {
            subject,
            body,
            transport: b.build(),
            settings,
            from,
            to,
            sent: HashSet::new(),
        })
    }

    /// Sends one event; the server's answer (code and text) on success.
    fn send(&self, event: &AlertEvent) -> Result<String, NotifyError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(match &self.subject {
                Some(t) => t.render(event, self.settings.privacy)?,
                None => subject(event, self.settings.privacy),
            })
            .message_id(Some(message_id(&event.idempotency_key())))
            .header(ContentType::TEXT_PLAIN);
        for t in &self.to {
            b = b.to(t.clone());
        }
        let msg = b
            .body(match &self.body {
                Some(t) => t.render(event, self.settings.privacy)?,
                None => body(event, self.settings.privacy),
            })
            .map_err(|e| NotifyError::Permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(&msg) {
            Ok(r) => Ok(format!(
                "{} {}",
                r.code(),
                r.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => {
                let why = format!("{}: {}", self.settings.describe(), chain(&e));
                // 5xx: the server will not take it however often it is asked; a
                // certificate that cannot be verified will not verify on the next try
                // either. 4xx, refused connections, timeouts, TLS hiccups: try again.
                if e.is_permanent() || why.contains("invalid peer certificate") {
                    Err(NotifyError::Permanent(why))
                } else {
                    Err(NotifyError::Transient(why))
                }
            }
        }
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// `<KEY@vitalwatch>` with the characters a Message-ID's left part may not hold replaced.
pub fn message_id(key: &str) -> String {
    let left: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{left}@vitalwatch>")
}

impl Notifier for SmtpNotifier {
    fn name(&self) -> &str {
        &self.settings.name
    }

    /// One message per connection at a time.
    fn max_batch(&self) -> usize {
        self.settings.connections.max(1)
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        // What an earlier batch left behind is settled (delivered or given up).
        let first = batch.first().map_or(0, |i| i.seq);
        self.sent.retain(|&seq| seq >= first);
        let mut lanes: Vec<Vec<(u64, &AlertEvent)>> =
            vec![Vec::new(); self.settings.connections.clamp(1, batch.len().max(1))];
        for item in batch.iter().filter(|i| !self.sent.contains(&i.seq)) {
            let e = item.event()?;
            // One patient's events over one connection, in order.
            let lane = e
                .patient_id
                .as_str()
                .bytes()
                .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                % lanes.len();
            lanes[lane].push((item.seq, e));
        }
        let this = &*self;
        let results: Vec<(Vec<u64>, Option<NotifyError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .iter()
                .filter(|l| !l.is_empty())
                .map(|lane| {
                    s.spawn(move || {
                        let mut done = Vec::new();
                        for &(seq, e) in lane {
                            if let Err(err) = this.send(e) {
                                return (done, Some(err));
                            }
                            done.push(seq);
                        }
                        (done, None)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (
                            Vec::new(),
                            Some(NotifyError::Transient("a sending thread panicked".into())),
                        )
                    })
                })
                .collect()
        });
        let mut error: Option<NotifyError> = None;
        for (done, err) in results {
            self.sent.extend(done);
            // A permanent failure outranks a transient one: retrying cannot help it.
            match (&error, err) {
                (_, None) => {}
                (Some(NotifyError::Permanent(_)), Some(_)) => {}
                (_, Some(e)) => error = Some(e),
            }
        }
        match error {
            Some(e) => Err(e),
            None => {
                self.sent.clear();
                Ok(())
            }
        }
    }

    fn went_out(&self, item: &OutboxItem) -> bool {
        self.sent.contains(&item.seq)
    }

    fn send_test(&mut self, item: &OutboxItem) -> Result<String, NotifyError> {
        self.send(item.event()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_privacy_keeps_personal_data_out_of_subject_and_body() {
        let mut e = crate::store::contract::sample_event();
        let p = std::sync::Arc::make_mut(&mut e.patient);
        p.patientname = "Pam".into();
        p.patientaddress = "ABC test Address".into();
        p.phone_number = "4982739282".into();
        p.admitted_ward = "5".into();
        assert_eq!(subject(&e, Privacy::Full), "Health Alert: Patient- Pam");
        let full = body(&e, Privacy::Full);
        assert!(full.contains("patientname: Pam") && full.contains("phone_number: 4982739282"));
        let minimal = format!(
            "{}\n{}",
            subject(&e, Privacy::Minimal),
            body(&e, Privacy::Minimal)
        );
        for secret in ["Pam", "ABC test", "4982739282"] {
            assert!(!minimal.contains(secret), "{secret} leaked: {minimal}");
        }
        assert!(minimal.contains("admitted_ward: 5") && minimal.contains("patient_id: 7"));
        let id = message_id(&e.idempotency_key());
        assert!(
            id.starts_with('<') && id.ends_with("@vitalwatch>") && !id.contains(':'),
            "{id}"
        );
    }
}
