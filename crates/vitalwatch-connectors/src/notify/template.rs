//! Per-notifier message templates: a notifier's subject or body written in MiniJinja
//! (Jinja2's syntax) over the alert event's fields.
//!
//! Where it sits: inside the e-mail, SNS and webhook notifiers, replacing their built-in
//! text when a `*_template` key is set. Variables are the alert-log fields
//! (`alert_id`, `event`, `state`, `priority`, `rule`, `patient_id`, `patientname`, `age`,
//! `patientaddress`, `phone_number`, `admitted_ward`, `heartBeat`, `bp`, `vital`, `value`,
//! `alert_message`, `input_message_time`, `alert_generated_time`, ...); under
//! `privacy = "minimal"` the personal ones are not there at all, so a template cannot leak
//! them. A variable that does not exist is an error, found by `config check`, which
//! renders every template against a test event.

use minijinja::{Environment, UndefinedBehavior};
use vitalwatch_core::alert::AlertEvent;

use super::{NotifyError, PERSONAL_FIELDS, Privacy};

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// The fields a template sees for `e`.
pub fn context(e: &AlertEvent, privacy: Privacy) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if privacy == Privacy::Minimal {
        strip_personal(&mut v);
    }
    v
}

/// Removes the fields that identify a person, wherever the event JSON has them.
pub fn strip_personal(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        for f in PERSONAL_FIELDS {
            o.remove(f);
        }
        for child in o.values_mut() {
            strip_personal(child);
        }
    }
}

impl Template {
    /// A template from its source, rendered once against a test event (syntax errors and
    /// unknown variables are found here, not at the first alarm).
    pub fn new(source: &str, privacy: Privacy) -> Result<Self, String> {
        let t = Template {
            source: source.to_owned(),
        };
        let test = super::test_event(vitalwatch_core::model::Timestamp(0));
        let ctx = minijinja::Value::from_serialize(context(&test, privacy));
        match environment().render_str(&t.source, ctx) {
            Ok(_) => Ok(t),
            Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError => Err(format!(
                "{e}: a field that does not exist{}",
                match privacy {
                    Privacy::Minimal => format!(
                        ", or one privacy = \"minimal\" leaves out ({})",
                        PERSONAL_FIELDS.join(", ")
                    ),
                    Privacy::Full => String::new(),
                }
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The text for `e`.
    pub fn render(&self, e: &AlertEvent, privacy: Privacy) -> Result<String, NotifyError> {
        let ctx = minijinja::Value::from_serialize(context(e, privacy));
        environment()
            .render_str(&self.source, ctx)
            .map_err(|err| NotifyError::Permanent(format!("template: {err}")))
    }
}

/// The template of a `*_template` setting (`""`: none, the built-in text).
pub fn optional(source: &str, privacy: Privacy) -> Result<Option<Template>, String> {
    if source.is_empty() {
        Ok(None)
    } else {
        Template::new(source, privacy).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_event_fields_and_finds_mistakes_before_the_first_alarm() {
        let mut e = crate::store::contract::sample_event();
        let p = std::sync::Arc::make_mut(&mut e.patient);
        p.patientname = "Pam".into();
        p.admitted_ward = "5".into();
        let t = Template::new(
            "{{ priority | upper }}: {{ alert_message }} — {{ patientname }}, ward {{ admitted_ward }}",
            Privacy::Full,
        )
        .unwrap();
        assert_eq!(
            t.render(&e, Privacy::Full).unwrap(),
            format!("HIGH: {} — Pam, ward 5", e.alert_message)
        );
        // Under minimal privacy the name is not there to print: found at once.
        let err = Template::new("{{ patientname }}", Privacy::Minimal).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(
            Template::new("{{ patinetname }}", Privacy::Full).is_err(),
            "a typo"
        );
        assert!(
            Template::new("{% if %}", Privacy::Full).is_err(),
            "a syntax error"
        );
    }
}
