//! The webhook notifier: each alert event as one HTTP POST — to a hospital system (the
//! alert JSON), a Slack or a Microsoft Teams incoming webhook (a one-line message).
//!
//! Where it sits: an outbox consumer like every notifier, one event per request (a failed
//! request never repeats one that was accepted). The event's idempotency key goes in the
//! `Idempotency-Key` header. 2xx is delivered; 408, 429, 5xx, refused connections and
//! timeouts are transient (retried with the pipeline's backoff); any other answer is
//! permanent (a wrong URL or a rejected payload will not get better by asking again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vitalwatch_core::alert::AlertEvent;
use vitalwatch_core::model::Duration;

use super::template::{Template, optional, strip_personal};
use super::{Notifier, NotifyError, OutboxItem, Privacy, summary};

/// What the request body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The alert event's JSON, as `alerts.jsonl` has it.
    Json,
    /// A Slack incoming webhook: `{"text": "…"}`.
    Slack,
    /// A Microsoft Teams incoming webhook: a MessageCard with the line as its text.
    Teams,
}

/// `[[notifiers]] type = "webhook"`: alert events as HTTP POSTs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The notifier's name (its outbox cursor and delivery records are kept under it).
    pub name: String,
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// Extra request headers (`Authorization`, ...). Values are never printed.
    pub headers: BTreeMap<String, String>,
    /// `json`, `slack` or `teams`.
    pub preset: Preset,
    /// `full` or `minimal` (no name, age, address or phone).
    pub privacy: Privacy,
    /// How long one request may take.
    pub timeout: Duration,
    /// The request body as a template (`""`: the preset's); sent as `application/json`,
    /// so write JSON (the `tojson` filter quotes a value).
    pub body_template: String,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            name: "webhook".into(),
            url: String::new(),
            headers: BTreeMap::new(),
            preset: Preset::Json,
            privacy: Privacy::Full,
            timeout: Duration::from_secs(10),
            body_template: String::new(),
        }
    }
}

impl WebhookSettings {
    /// Everything wrong with these settings, each prefixed with `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push(format!(
                "{prefix}: a webhook notifier needs an http:// or https:// url"
            ));
        }
        for k in self.headers.keys() {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                p.push(format!("{prefix}: {k:?} is not a header name"));
            }
        }
        if let Err(e) = optional(&self.body_template, self.privacy) {
            p.push(format!("{prefix}: body_template: {e}"));
        }
        p
    }

    /// For people: where it posts (the URL's path and query may hold a token: only the
    /// scheme and host are shown; header values never).
    pub fn describe(&self) -> String {
        let host = self
            .url
            .split_once("://")
            .map(|(scheme, rest)| {
                format!("{scheme}://{}", rest.split(['/', '?']).next().unwrap_or(""))
            })
            .unwrap_or_default();
        format!("webhook {host}/…")
    }
}

/// Posts alert events to a URL.
#[derive(Debug)]
pub struct WebhookNotifier {
    settings: WebhookSettings,
    template: Option<Template>,
    agent: ureq::Agent,
}

impl WebhookNotifier {
    /// A notifier for `settings`.
    pub fn new(settings: WebhookSettings) -> Result<Self, NotifyError> {
        let agent = super::http::agent(settings.timeout);
        let template = optional(&settings.body_template, settings.privacy).map_err(|e| {
            NotifyError::Permanent(format!("webhook notifier {}: {e}", settings.name))
        })?;
        Ok(WebhookNotifier {
            settings,
            template,
            agent,
        })
    }

    /// The request body for `event`.
    pub fn body(&self, event: &AlertEvent, json: &str) -> Result<String, NotifyError> {
        let privacy = self.settings.privacy;
        if let Some(t) = &self.template {
            return t.render(event, privacy);
        }
        let v = match self.settings.preset {
            Preset::Json => {
                let mut v: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| NotifyError::Permanent(format!("alert event is not JSON: {e}")))?;
                if privacy == Privacy::Minimal {
                    strip_personal(&mut v);
                }
                return Ok(v.to_string());
            }
            Preset::Slack => serde_json::json!({ "text": summary(event, privacy) }),
            Preset::Teams => serde_json::json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": format!("Health Alert: {}", event.alert_message),
                "themeColor": match event.priority {
                    vitalwatch_core::alert::Priority::High => "D32F2F",
                    vitalwatch_core::alert::Priority::Medium => "FBC02D",
                    vitalwatch_core::alert::Priority::Low => "0097A7",
                },
                "text": summary(event, privacy),
            }),
        };
        Ok(v.to_string())
    }

    /// Posts one event; `HTTP <status>` and the start of the answer on success.
    fn post(&self, item: &OutboxItem) -> Result<String, NotifyError> {
        let event = item.event()?;
        let body = self.body(event, &item.body)?;
        let mut req = self
            .agent
            .post(&self.settings.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &event.idempotency_key());
        for (k, v) in &self.settings.headers {
            req = req.header(k, v);
        }
        let what = self.settings.describe();
        let (status, text) = super::http::send(req, body.as_bytes(), 4096, &what)?;
        let answer = format!("HTTP {status} {}", text.trim())
            .trim_end()
            .to_owned();
        match status {
            200..=299 => Ok(answer),
            408 | 429 | 500..=599 => Err(NotifyError::Transient(format!("{what}: {answer}"))),
            _ => Err(NotifyError::Permanent(format!("{what}: {answer}"))),
        }
    }
}

impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        &self.settings.name
    }

    /// One request per delivery: a failed request never repeats an accepted one.
    fn max_batch(&self) -> usize {
        1
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        for item in batch {
            self.post(item)?;
        }
        Ok(())
    }

    fn send_test(&mut self, item: &OutboxItem) -> Result<String, NotifyError> {
        self.post(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_privacy_strips_personal_fields_from_every_preset() {
        let mut e = crate::store::contract::sample_event();
        let p = std::sync::Arc::make_mut(&mut e.patient);
        p.patientname = "Pam".into();
        p.phone_number = "4982739282".into();
        p.patientaddress = "ABC test Address".into();
        p.age = Some(72);
        let json = serde_json::to_string(&e).unwrap();
        for preset in [Preset::Json, Preset::Slack, Preset::Teams] {
            let n = |privacy| {
                WebhookNotifier::new(WebhookSettings {
                    url: "http://127.0.0.1:9/".into(),
                    preset,
                    privacy,
                    ..WebhookSettings::default()
                })
                .unwrap()
            };
            let full = n(Privacy::Full).body(&e, &json).unwrap();
            assert!(full.contains("Pam"), "{preset:?}: {full}");
            let minimal = n(Privacy::Minimal).body(&e, &json).unwrap();
            for personal in ["Pam", "4982739282", "ABC test", "\"age\""] {
                assert!(
                    !minimal.contains(personal),
                    "{preset:?} leaked {personal}: {minimal}"
                );
            }
            assert!(minimal.contains(e.alert_id.as_str()), "{minimal}");
        }
        let s = WebhookSettings {
            url: "https://hooks.slack.com/services/T000/B000/SECRET".into(),
            ..WebhookSettings::default()
        };
        assert_eq!(s.describe(), "webhook https://hooks.slack.com/…");
    }
}
