//! Value encoding: [`EnrichedPosition`] as a `StoredPosition` protobuf.
//!
//! Protobuf rather than a Rust-specific format so that data directories stay
//! readable when fields are added (see `schemas/proto/storage.proto`).

use fleetd_schemas::EnrichedPosition;
use fleetd_schemas::storage::StoredPosition;
use prost::Message;

use crate::StoreError;

/// Encodes a position for any keyspace.
pub(crate) fn encode(position: &EnrichedPosition) -> Vec<u8> {
    StoredPosition::from(position).encode_to_vec()
}

/// Decodes a stored value; a value that does not decode, or whose device id
/// is no longer valid, is reported as corrupt rather than skipped.
pub(crate) fn decode(bytes: &[u8]) -> Result<EnrichedPosition, StoreError> {
    let stored = StoredPosition::decode(bytes)
        .map_err(|err| StoreError::Corrupt(format!("position: {err}")))?;
    EnrichedPosition::try_from(stored)
        .map_err(|err| StoreError::Corrupt(format!("position: {err}")))
}
