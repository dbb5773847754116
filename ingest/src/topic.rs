//! MQTT topic routing: which topics fleetd consumes and what they mean.

use fleetd_schemas::{DeviceId, InvalidId};

/// The broker filters fleetd's ingest link subscribes to. They are wider than
/// the topics consumed so that malformed topics under fleetd's namespaces are
/// seen and counted as `unknown_topic` instead of silently vanishing.
pub const SUBSCRIPTIONS: [&str; 2] = ["fleet/#", "owntracks/#"];

/// What a topic asks fleetd to do with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRoute {
    /// `fleet/{device_id}/pos`: one position.
    Position(DeviceId),
    /// `fleet/{device_id}/pos/batch`: several positions.
    PositionBatch(DeviceId),
    /// `owntracks/{user}/{device}`: an OwnTracks message; id `user/device`.
    OwnTracks(DeviceId),
    /// A topic of fleetd's own output or of OwnTracks sub-topics
    /// (`fleet/+/alerts`, `owntracks/+/+/event`, `.../cmd`, ...): not input.
    Ignored,
    /// A device topic whose id is not valid.
    BadDeviceId(InvalidId),
    /// Under `fleet/` or `owntracks/` but not a known shape.
    Unknown,
}

/// Routes a topic. Pure and allocation-free except for the device id.
pub fn route(topic: &str) -> TopicRoute {
    // fleetd's own alerts, also for OwnTracks ids (`fleet/user/device/alerts`).
    if topic.starts_with("fleet/") && topic.ends_with("/alerts") {
        return TopicRoute::Ignored;
    }
    let mut levels = topic.split('/');
    match (levels.next(), levels.next(), levels.next(), levels.next()) {
        (Some("fleet"), Some(id), Some(kind), rest) => {
            let route = match (kind, rest, levels.next()) {
                ("pos", None, _) => TopicRoute::Position,
                ("pos", Some("batch"), None) => TopicRoute::PositionBatch,
                ("alerts", None, _) => return TopicRoute::Ignored,
                _ => return TopicRoute::Unknown,
            };
            match DeviceId::parse(id) {
                Ok(id) if !id.as_str().contains('/') => route(id),
                Ok(_) => TopicRoute::Unknown,
                Err(e) => TopicRoute::BadDeviceId(e),
            }
        }
        (Some("owntracks"), Some(user), Some(device), None) => {
            if user.is_empty() || device.is_empty() {
                return TopicRoute::BadDeviceId(InvalidId::Empty(fleetd_schemas::IdKind::Device));
            }
            match DeviceId::parse(&format!("{user}/{device}")) {
                Ok(id) => TopicRoute::OwnTracks(id),
                Err(e) => TopicRoute::BadDeviceId(e),
            }
        }
        (Some("owntracks"), Some(_), Some(_), Some(_)) => TopicRoute::Ignored,
        _ => TopicRoute::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    #[test]
    fn routes() {
        assert_eq!(route("fleet/t1/pos"), TopicRoute::Position(id("t1")));
        assert_eq!(
            route("fleet/t1/pos/batch"),
            TopicRoute::PositionBatch(id("t1"))
        );
        assert_eq!(
            route("owntracks/alice/phone"),
            TopicRoute::OwnTracks(id("alice/phone"))
        );
        assert_eq!(route("fleet/t1/alerts"), TopicRoute::Ignored);
        assert_eq!(route("fleet/alice/phone/alerts"), TopicRoute::Ignored);
        assert_eq!(route("owntracks/alice/phone/event"), TopicRoute::Ignored);
        assert_eq!(route("owntracks/alice/phone/cmd"), TopicRoute::Ignored);
        for unknown in [
            "fleet",
            "fleet/t1",
            "fleet/t1/x",
            "fleet/t1/pos/x",
            "fleet/t1/pos/batch/x",
            "owntracks/a",
        ] {
            assert_eq!(route(unknown), TopicRoute::Unknown, "{unknown}");
        }
        assert!(matches!(
            route("fleet/bad id/pos"),
            TopicRoute::BadDeviceId(_)
        ));
        assert!(matches!(route("fleet//pos"), TopicRoute::BadDeviceId(_)));
        assert!(matches!(
            route("owntracks//phone"),
            TopicRoute::BadDeviceId(_)
        ));
        assert!(matches!(
            route("owntracks/a b/phone"),
            TopicRoute::BadDeviceId(_)
        ));
    }
}
