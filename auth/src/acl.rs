//! The topic ACL: which MQTT topics an [`Identity`] may publish to and
//! subscribe to.
//!
//! A device owns `fleet/{id}/…`; a device whose id is `user/device` (an
//! OwnTracks phone provisioned on its own) also owns `owntracks/user/device/…`;
//! an OwnTracks user owns `owntracks/{user}/…` (Mosquitto's
//! `pattern readwrite owntracks/%u/#`). Within what it owns, an identity may
//! publish anything except fleetd's outbound topics (`fleet/{id}/alerts`,
//! `owntracks/…/event`, so no one forges fleetd's alerts), and subscribe to
//! anything. Read-scoped API tokens may subscribe to every topic, write-scoped
//! ones publish to every topic as well (trusted gateways and dashboards).

use fleetd_schemas::Scope;

use crate::Identity;

/// Whether `identity` may publish to `topic` (a topic name, no wildcards).
pub fn may_publish(identity: &Identity, topic: &str) -> bool {
    match identity {
        Identity::Anonymous => true,
        Identity::Service { scope, .. } => *scope >= Scope::Write,
        // Share links are for the map page and its HTTP routes only.
        Identity::Share { .. } => false,
        Identity::Device(_) | Identity::User(_) => owns(identity, topic) && !is_outbound(topic),
    }
}

/// Whether `identity` may subscribe to `filter` (with `+`/`#` wildcards).
/// A device or user may subscribe only to filters that cannot match a topic
/// outside what it owns: the owned prefix must be spelt out, wildcards only
/// after it.
pub fn may_subscribe(identity: &Identity, filter: &str) -> bool {
    match identity {
        Identity::Anonymous => true,
        Identity::Service { scope, .. } => *scope >= Scope::Read,
        Identity::Share { .. } => false,
        Identity::Device(_) | Identity::User(_) => owns(identity, filter),
    }
}

/// Whether `topic` (or filter) lies in a namespace `identity` owns. The
/// prefix is compared literally, so a filter with a wildcard inside the
/// prefix (`fleet/+/alerts`) is not owned by anyone.
fn owns(identity: &Identity, topic: &str) -> bool {
    match identity {
        Identity::Device(id) => {
            let id = id.as_str();
            // `fleet/{id}/…`: a level must follow the id.
            under(topic, &["fleet", id]).is_some_and(|rest| !rest.is_empty())
                || id.split_once('/').is_some_and(|(user, device)| {
                    under(topic, &["owntracks", user, device]).is_some()
                })
        }
        Identity::User(user) => {
            // `owntracks/{user}/{device}…`: the device level must be there
            // (a topic `owntracks/alice` is nobody's position).
            under(topic, &["owntracks", user]).is_some_and(|rest| !rest.is_empty())
        }
        Identity::Service { .. } | Identity::Share { .. } | Identity::Anonymous => false,
    }
}

/// If the levels of `topic` start with exactly `prefix` (one level per
/// element; an element may itself contain `/`, as a device id `user/device`
/// does), the levels after it (`""` or `/…`).
fn under<'t>(topic: &'t str, prefix: &[&str]) -> Option<&'t str> {
    let mut rest = topic;
    for (i, level) in prefix.iter().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix('/')?;
        }
        rest = rest.strip_prefix(level)?;
    }
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// fleetd's own outbound topics, which only fleetd publishes.
fn is_outbound(topic: &str) -> bool {
    (topic.starts_with("fleet/") && topic.ends_with("/alerts"))
        || (topic.starts_with("owntracks/") && topic.ends_with("/event"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use fleetd_schemas::DeviceId;

    use super::*;

    fn device(id: &str) -> Identity {
        Identity::Device(DeviceId::parse(id).unwrap())
    }

    #[test]
    fn a_device_publishes_only_its_own_positions() {
        let a = device("truck-a");
        assert!(may_publish(&a, "fleet/truck-a/pos"));
        assert!(may_publish(&a, "fleet/truck-a/pos/batch"));
        assert!(!may_publish(&a, "fleet/truck-b/pos"));
        assert!(!may_publish(&a, "fleet/truck-ab/pos"));
        assert!(!may_publish(&a, "fleet/truck/pos"));
        assert!(!may_publish(&a, "fleet/truck-a"), "a prefix is not a topic");
        assert!(!may_publish(&a, "fleet/truck-a/alerts"), "no forged alerts");
        assert!(!may_publish(&a, "owntracks/truck-a/x"));
    }

    #[test]
    fn an_owntracks_device_id_owns_its_owntracks_topic() {
        let phone = device("alice/phone");
        assert!(may_publish(&phone, "owntracks/alice/phone"));
        assert!(may_publish(&phone, "fleet/alice/phone/pos"));
        assert!(!may_publish(&phone, "owntracks/alice/tablet"));
        assert!(!may_publish(&phone, "owntracks/alice/phone/event"));
        assert!(may_subscribe(&phone, "owntracks/alice/phone/event"));
        assert!(!may_subscribe(&phone, "owntracks/alice/+/event"));
    }

    #[test]
    fn a_user_owns_all_its_devices_and_no_one_elses() {
        let alice = Identity::User("alice".into());
        assert!(may_publish(&alice, "owntracks/alice/phone"));
        assert!(may_publish(&alice, "owntracks/alice/tablet"));
        assert!(!may_publish(&alice, "owntracks/alice"));
        assert!(!may_publish(&alice, "owntracks/bob/phone"));
        assert!(!may_publish(&alice, "owntracks/alicex/phone"));
        assert!(!may_publish(&alice, "fleet/alice/pos"));
        assert!(may_subscribe(&alice, "owntracks/alice/+/event"));
        assert!(may_subscribe(&alice, "owntracks/alice/#"));
        assert!(!may_subscribe(&alice, "owntracks/+/+/event"));
        assert!(!may_subscribe(&alice, "owntracks/#"));
        assert!(!may_subscribe(&alice, "#"));
    }

    #[test]
    fn subscriptions_must_spell_out_the_owned_prefix() {
        let a = device("truck-a");
        assert!(may_subscribe(&a, "fleet/truck-a/alerts"));
        assert!(may_subscribe(&a, "fleet/truck-a/#"));
        assert!(!may_subscribe(&a, "fleet/truck-b/alerts"));
        assert!(!may_subscribe(&a, "fleet/+/alerts"));
        assert!(!may_subscribe(&a, "fleet/#"));
        assert!(!may_subscribe(&a, "+/truck-a/alerts"));
        assert!(!may_subscribe(&a, "$share/g/fleet/truck-a/alerts"));
    }

    #[test]
    fn tokens_act_by_scope() {
        let read = Identity::Service {
            token_id: "r".into(),
            scope: Scope::Read,
        };
        let write = Identity::Service {
            token_id: "w".into(),
            scope: Scope::Write,
        };
        assert!(may_subscribe(&read, "fleet/+/alerts"));
        assert!(!may_publish(&read, "fleet/x/pos"));
        assert!(may_publish(&write, "fleet/x/pos"));
        assert!(may_subscribe(&write, "#"));
        assert!(may_publish(&Identity::Anonymous, "fleet/x/pos"));
    }
}
