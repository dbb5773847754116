//! Geofence membership: which fences a device is inside now, kept with its
//! vehicle state so that it survives restarts.

use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use crate::alert::GeofenceId;

/// A device's current visit of one fence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// The fence.
    #[serde(rename = "f")]
    pub fence: GeofenceId,
    /// Device time of the fix that entered, Unix ms.
    #[serde(rename = "e")]
    pub entered_ms: i64,
    /// Device time of the first fix of the current certainly-outside
    /// streak, if the device seems to be leaving.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub outside_since_ms: Option<i64>,
    /// Whether this visit's `dwell` alert has fired.
    #[serde(rename = "d", default, skip_serializing_if = "is_false")]
    pub dwell_fired: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Fence state of one device: the fences it is inside, sorted by fence id.
/// Serialized with short keys because it is written with every state change.
///
/// The processor's geofence tracker is the only writer; the rules (enter,
/// exit hysteresis, dwell) live there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceFences {
    /// Device time of the newest fix evaluated; older fixes are ignored.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub last_ts_ms: Option<i64>,
    /// Current memberships, sorted by fence id. A `ThinVec`: most devices
    /// are in no fence, and every device keeps this in its state, where an
    /// empty `ThinVec` is 8 bytes against a `Vec`'s 24.
    #[serde(rename = "m", default, skip_serializing_if = "ThinVec::is_empty")]
    pub members: ThinVec<Membership>,
}

impl DeviceFences {
    /// The fences the device is inside now, sorted by fence id.
    pub fn memberships(&self) -> &[Membership] {
        &self.members
    }

    /// Whether the device is inside `fence` now.
    pub fn is_member(&self, fence: &GeofenceId) -> bool {
        self.find(fence).is_ok()
    }

    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.last_ts_ms.is_none()
    }

    /// Where `fence` is in `members`: `Ok(i)` if a member, else the
    /// insertion point.
    pub fn find(&self, fence: &GeofenceId) -> Result<usize, usize> {
        self.members.binary_search_by(|m| m.fence.cmp(fence))
    }
}

/// A change of one device's membership in one fence, for the store's
/// "who is inside this fence" index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    /// The fence.
    pub fence: GeofenceId,
    /// The device.
    pub device: crate::DeviceId,
    /// Device time of the fix that entered or left, Unix ms.
    pub ts_ms: i64,
    /// Whether the device entered (else it left).
    pub entered: bool,
}
