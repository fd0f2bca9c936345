//! The text a WebSocket client is sent: the message with the audit log's
//! masker applied to its `service` and `data` (issue #12: whatever the
//! audit file masks is masked wherever the same data leaves the process).
//!
//! A bus message goes to every client of its channel; its masked text is
//! computed once and shared ([`MaskedTexts`]), so that a fan-out to many
//! clients costs one masking and one serialisation, not one per client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::mask::Masker;
use crate::bus::OpsMessage;

/// Bus messages whose text is kept (clients read in about the same order).
pub const CACHED_TEXTS: usize = 64;

/// [`OpsMessage`]'s wire form, borrowing the masked parts.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: u64,
    timestamp: &'a DateTime<Utc>,
    service: Option<&'a str>,
    data: &'a serde_json::Value,
}

/// The masked JSON text of one message.
pub fn render(masker: &Masker, msg: &OpsMessage) -> Result<Utf8Bytes, serde_json::Error> {
    let data = masker.masked(&msg.data);
    let service = msg.service.as_deref().map(|s| masker.mask_str(s));
    let wire = Wire {
        kind: &msg.kind,
        seq: msg.seq,
        timestamp: &msg.timestamp,
        service: service.as_deref(),
        data: data.as_ref().unwrap_or(&msg.data),
    };
    serde_json::to_string(&wire).map(Utf8Bytes::from)
}

/// The texts of the last [`CACHED_TEXTS`] bus messages sent, by message.
/// A `Weak` keeps the message's allocation (not the message), so its
/// address cannot be reused by another message while it is cached.
#[derive(Default)]
pub struct MaskedTexts {
    recent: Mutex<VecDeque<(Weak<OpsMessage>, Utf8Bytes)>>,
}

impl MaskedTexts {
    /// The masked text of a bus message, rendered once for all clients.
    pub fn text(
        &self,
        masker: &Masker,
        msg: &Arc<OpsMessage>,
    ) -> Result<Utf8Bytes, serde_json::Error> {
        let key = Arc::as_ptr(msg);
        if let Some((_, text)) = self.lock().iter().find(|(m, _)| m.as_ptr() == key) {
            return Ok(text.clone());
        }
        // Rendered outside the lock; two clients racing both render, once
        // each, and the text is kept twice: harmless.
        let text = render(masker, msg)?;
        let mut recent = self.lock();
        recent.push_back((Arc::downgrade(msg), text.clone()));
        while recent.len() > CACHED_TEXTS {
            recent.pop_front();
        }
        Ok(text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Weak<OpsMessage>, Utf8Bytes)>> {
        // Only cached texts are behind it: a poisoned lock is still usable.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Channel, OpsBus};
    use serde_json::json;

    fn masker() -> Masker {
        Masker::new(&[r"\d{3}-\d{2}-\d{4}".to_string()]).unwrap()
    }

    #[test]
    fn data_and_service_are_masked_in_the_sent_text_only() {
        let bus = OpsBus::default();
        let msg = bus.publish(
            Channel::Failover,
            "failover_activated",
            Some("redis://:pw@h"),
            json!({
                "reason": "drill password=hunter2 Authorization: Basic dXNlcjpwYXNz",
                "evidence": {"api_key": "k", "note": "ssn 123-45-6789"},
                "epoch": 3,
            }),
        );
        let text = render(&masker(), &msg).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["type"], "failover_activated");
        assert_eq!(v["seq"], msg.seq);
        assert_eq!(v["service"], "redis://:***@h");
        assert_eq!(
            v["data"]["reason"],
            "drill password=*** Authorization: Basic ***"
        );
        assert_eq!(v["data"]["evidence"]["api_key"], "***");
        assert_eq!(v["data"]["evidence"]["note"], "ssn ***");
        assert_eq!(v["data"]["epoch"], 3);
        // The bus message itself is untouched.
        assert!(msg.data["reason"].as_str().unwrap().contains("hunter2"));
        for secret in ["hunter2", "dXNlcjpwYXNz", "6789", ":pw@"] {
            assert!(!text.as_str().contains(secret), "{secret} in {text:?}");
        }
    }

    #[test]
    fn a_message_without_secrets_is_sent_as_the_bus_serialises_it() {
        let bus = OpsBus::default();
        let msg = bus.publish(
            Channel::Health,
            "health_update",
            None,
            json!({"a": [1, "b"]}),
        );
        let text = render(&masker(), &msg).unwrap();
        assert_eq!(text.as_str(), serde_json::to_string(&*msg).unwrap());
    }

    #[test]
    fn texts_are_rendered_once_per_message() {
        let bus = OpsBus::default();
        let texts = MaskedTexts::default();
        let m = masker();
        let a = bus.publish(
            Channel::Failover,
            "failover_event",
            None,
            json!({"token": "t"}),
        );
        let first = texts.text(&m, &a).unwrap();
        let again = texts.text(&m, &a).unwrap();
        assert_eq!(first, again);
        assert_eq!(texts.lock().len(), 1);
        assert!(first.as_str().contains("\"token\":\"***\""));
        // Another message (even with equal content) gets its own text.
        let b = bus.publish(
            Channel::Failover,
            "failover_event",
            None,
            json!({"token": "t"}),
        );
        let other = texts.text(&m, &b).unwrap();
        assert!(other.as_str().contains(&format!("\"seq\":{}", b.seq)));
        for _ in 0..(2 * CACHED_TEXTS) {
            let c = bus.publish(Channel::Health, "health_update", None, json!({}));
            texts.text(&m, &c).unwrap();
        }
        assert_eq!(texts.lock().len(), CACHED_TEXTS);
    }
}
