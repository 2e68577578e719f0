//! The Amazon SNS notifier: each alert event published to an SNS topic — the classic
//! design's delivery channel (its e-mail went out through SNS), now once per state change.
//!
//! Where it sits: an outbox consumer like every notifier, one `Publish` per event. The
//! request is the SNS Query API signed with AWS Signature Version 4 (written here: the
//! AWS SDK would build a second TLS stack and hundreds of crates for one call).
//! Credentials come from the standard chain's first two links: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile
//! `AWS_PROFILE` or the configured one). The message is the classic subject and fields;
//! `privacy` defaults to `minimal` (SMS and e-mail subscriptions leave the hospital). The
//! event's idempotency key is a message attribute and, on FIFO topics, the deduplication
//! id (the patient id is the message group: one patient's events stay in order).
//! Throttling and 5xx answers are transient; other errors permanent.

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::model::Duration;

use super::template::{Template, optional};
use super::{Notifier, NotifyError, OutboxItem, Privacy, body, subject};

/// `[[notifiers]] type = "sns"`: alert events onto an Amazon SNS topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnsSettings {
    /// The notifier's name (its outbox cursor and delivery records are kept under it).
    pub name: String,
    /// The topic's ARN (`arn:aws:sns:REGION:ACCOUNT:NAME`, `.fifo` for a FIFO topic).
    pub topic_arn: String,
    /// The region; `""`: the ARN's.
    pub region: String,
    /// Another endpoint (an emulator, a VPC endpoint); `""`: `https://sns.REGION.amazonaws.com`.
    pub endpoint_url: String,
    /// The shared-credentials profile when the environment has no keys; `""`:
    /// `AWS_PROFILE`, else `default`.
    pub profile: String,
    /// `minimal` (ward and patient id only) or `full`.
    pub privacy: Privacy,
    /// How long one request may take.
    pub timeout: Duration,
    /// The subject as a template (`""`: the classic `Health Alert: Patient- {name}`).
    pub subject_template: String,
    /// The message as a template (`""`: the classic fields, one per line).
    pub message_template: String,
}

impl Default for SnsSettings {
    fn default() -> Self {
        SnsSettings {
            name: "sns".into(),
            topic_arn: String::new(),
            region: String::new(),
            endpoint_url: String::new(),
            profile: String::new(),
            privacy: Privacy::Minimal,
            timeout: Duration::from_secs(10),
            subject_template: String::new(),
            message_template: String::new(),
        }
    }
}

impl SnsSettings {
    /// Everything wrong with these settings, each prefixed with `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        let parts: Vec<&str> = self.topic_arn.split(':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" {
            p.push(format!(
                "{prefix}: topic_arn {:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
                self.topic_arn
            ));
        }
        let e = &self.endpoint_url;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            p.push(format!(
                "{prefix}: endpoint_url must start with http:// or https://"
            ));
        }
        for (key, t) in [
            ("subject_template", &self.subject_template),
            ("message_template", &self.message_template),
        ] {
            if let Err(e) = optional(t, self.privacy) {
                p.push(format!("{prefix}: {key}: {e}"));
            }
        }
        p
    }

    /// The region requests are signed for.
    fn region(&self) -> String {
        if !self.region.is_empty() {
            return self.region.clone();
        }
        self.topic_arn
            .split(':')
            .nth(3)
            .unwrap_or_default()
            .to_owned()
    }

    fn endpoint(&self) -> String {
        if self.endpoint_url.is_empty() {
            format!("https://sns.{}.amazonaws.com/", self.region())
        } else {
            format!("{}/", self.endpoint_url.trim_end_matches('/'))
        }
    }
}

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token (temporary credentials).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The environment's keys, else the shared credentials file's `profile` (or
    /// `AWS_PROFILE`, or `default`).
    pub fn from_chain(profile: &str) -> Result<Credentials, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(a), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key: a,
                secret_key: s,
                session_token: env("AWS_SESSION_TOKEN"),
            });
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
        let profile = if profile.is_empty() {
            env("AWS_PROFILE").unwrap_or_else(|| "default".into())
        } else {
            profile.to_owned()
        };
        let none = || {
            format!(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile [{profile}] in the shared credentials file"
            )
        };
        let text = file
            .and_then(|f| std::fs::read_to_string(f).ok())
            .ok_or_else(none)?;
        let mut section = String::new();
        let (mut a, mut s, mut t) = (None, None, None);
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_owned();
            } else if section == profile
                && let Some((k, v)) = line.split_once('=')
            {
                let v = Some(v.trim().to_owned());
                match k.trim() {
                    "aws_access_key_id" => a = v,
                    "aws_secret_access_key" => s = v,
                    "aws_session_token" => t = v,
                    _ => {}
                }
            }
        }
        match (a, s) {
            (Some(access_key), Some(secret_key)) => Ok(Credentials {
                access_key,
                secret_key,
                session_token: t,
            }),
            _ => Err(none()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// `application/x-www-form-urlencoded` value encoding as AWS signs it (RFC 3986).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Signs a request with AWS Signature Version 4; returns the headers to add
/// (`x-amz-date`, `x-amz-security-token` if any, `authorization`). `headers` are the
/// request's other signed headers, `host` among them; `amz_date` is `YYYYMMDDTHHMMSSZ`.
#[allow(clippy::too_many_arguments)]
pub fn sign_v4(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.trim().to_owned()))
        .collect();
    all.push(("x-amz-date".into(), amz_date.into()));
    if let Some(t) = &creds.session_token {
        all.push(("x-amz-security-token".into(), t.clone()));
    }
    all.sort();
    let canonical_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
        hex(&Sha256::digest(body))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", creds.secret_key).as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, service);
    let k = hmac(&k, "aws4_request");
    let signature = hex(&hmac(&k, &to_sign));
    let mut out = vec![("x-amz-date".to_owned(), amz_date.to_owned())];
    if let Some(t) = &creds.session_token {
        out.push(("x-amz-security-token".into(), t.clone()));
    }
    out.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key
        ),
    ));
    out
}

/// The text between `<tag>` and `</tag>` in an XML answer.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// Publishes alert events to an SNS topic.
#[derive(Debug)]
pub struct SnsNotifier {
    settings: SnsSettings,
    subject: Option<Template>,
    message: Option<Template>,
    agent: ureq::Agent,
}

impl SnsNotifier {
    /// A notifier for `settings` (credentials are read at each publish: rotated keys
    /// are picked up).
    pub fn new(settings: SnsSettings) -> Result<Self, NotifyError> {
        let agent = super::http::agent(settings.timeout);
        let bad =
            |e: String| NotifyError::Permanent(format!("sns notifier {}: {e}", settings.name));
        let subject = optional(&settings.subject_template, settings.privacy).map_err(bad)?;
        let message = optional(&settings.message_template, settings.privacy).map_err(bad)?;
        Ok(SnsNotifier {
            settings,
            subject,
            message,
            agent,
        })
    }

    /// The form body of the `Publish` request for `event`.
    pub fn publish_body(&self, event: &AlertEvent) -> Result<String, NotifyError> {
        let key = event.idempotency_key();
        let privacy = self.settings.privacy;
        let subject = match &self.subject {
            Some(t) => t.render(event, privacy)?,
            None => subject(event, privacy),
        };
        let message = match &self.message {
            Some(t) => t.render(event, privacy)?,
            None => body(event, privacy),
        };
        let mut params: Vec<(&str, String)> = vec![
            ("Action", "Publish".into()),
            ("Version", "2010-03-31".into()),
            ("TopicArn", self.settings.topic_arn.clone()),
            ("Subject", subject),
            ("Message", message),
            (
                "MessageAttributes.entry.1.Name",
                "vitalwatch-idempotency-key".into(),
            ),
            ("MessageAttributes.entry.1.Value.DataType", "String".into()),
            ("MessageAttributes.entry.1.Value.StringValue", key.clone()),
            ("MessageAttributes.entry.2.Name", "priority".into()),
            ("MessageAttributes.entry.2.Value.DataType", "String".into()),
            (
                "MessageAttributes.entry.2.Value.StringValue",
                event.priority.as_str().into(),
            ),
        ];
        if self.settings.topic_arn.ends_with(".fifo") {
            // At most 128 characters of letters, digits and punctuation.
            let dedup: String = key
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(128)
                .collect();
            params.push(("MessageDeduplicationId", dedup));
            params.push(("MessageGroupId", event.patient_id.as_str().to_owned()));
        }
        Ok(params
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&"))
    }

    /// Publishes one event; the topic's answer (`MessageId …`) on success.
    fn publish(&self, event: &AlertEvent) -> Result<String, NotifyError> {
        let creds =
            Credentials::from_chain(&self.settings.profile).map_err(NotifyError::Permanent)?;
        let url = self.settings.endpoint();
        let host = url
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or(""))
            .unwrap_or("")
            .to_owned();
        let body = self.publish_body(event)?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let signed = sign_v4(
            "POST",
            "/",
            "",
            &[("content-type", content_type), ("host", &host)],
            body.as_bytes(),
            &creds,
            &self.settings.region(),
            "sns",
            &amz_date,
        );
        let mut req = self.agent.post(&url).header("content-type", content_type);
        for (k, v) in &signed {
            req = req.header(k, v);
        }
        let what = format!("sns {}", self.settings.topic_arn);
        let (status, text) = super::http::send(req, body.as_bytes(), 64 * 1024, &what)?;
        if (200..300).contains(&status) {
            return Ok(format!(
                "MessageId {}",
                xml_field(&text, "MessageId").unwrap_or("?")
            ));
        }
        let code = xml_field(&text, "Code").unwrap_or("");
        let answer = format!(
            "HTTP {status} {code}: {}",
            xml_field(&text, "Message").unwrap_or(text.trim())
        );
        if status >= 500 || code.starts_with("Throttl") || code == "RequestThrottled" {
            Err(NotifyError::Transient(format!("{what}: {answer}")))
        } else {
            Err(NotifyError::Permanent(format!("{what}: {answer}")))
        }
    }
}

impl Notifier for SnsNotifier {
    fn name(&self) -> &str {
        &self.settings.name
    }

    /// One `Publish` per delivery: a failed one never repeats one that went out.
    fn max_batch(&self) -> usize {
        1
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        for item in batch {
            self.publish(item.event()?)?;
        }
        Ok(())
    }

    fn send_test(&mut self, item: &OutboxItem) -> Result<String, NotifyError> {
        self.publish(item.event()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `get-vanilla` case of AWS's Signature Version 4 test suite.
    #[test]
    fn signs_like_the_aws_sigv4_test_suite() {
        let creds = Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let h = sign_v4(
            "GET",
            "/",
            "",
            &[("Host", "example.amazonaws.com")],
            b"",
            &creds,
            "us-east-1",
            "service",
            "20150830T123600Z",
        );
        assert_eq!(
            h.last().unwrap().1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn fifo_topics_get_the_idempotency_key_as_deduplication_id() {
        let e = crate::store::contract::sample_event();
        let n = |arn: &str| {
            SnsNotifier::new(SnsSettings {
                topic_arn: arn.into(),
                ..SnsSettings::default()
            })
            .unwrap()
            .publish_body(&e)
            .unwrap()
        };
        let fifo = n("arn:aws:sns:eu-west-1:123456789012:alerts.fifo");
        assert!(fifo.contains(&format!(
            "MessageDeduplicationId={}",
            form_encode(&e.idempotency_key())
        )));
        assert!(fifo.contains("MessageGroupId=7"));
        assert!(!n("arn:aws:sns:eu-west-1:123456789012:alerts").contains("MessageDeduplicationId"));
    }
}
