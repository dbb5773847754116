//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the
//! secret is `whsec_` and base64 of random bytes; each delivery carries
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::WebhookError;

/// The prefix of a secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Fewest and most key bytes a secret may carry (Standard Webhooks asks for
/// 24 to 64).
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;

/// A new random secret of 32 bytes.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of `secret`, checked.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
        WebhookError::Invalid(format!("secret must start with {SECRET_PREFIX:?}"))
    })?;
    let key = STANDARD.decode(encoded).map_err(|e| {
        WebhookError::Invalid(format!("secret is not base64 after the prefix: {e}"))
    })?;
    if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
        return Err(WebhookError::Invalid(format!(
            "secret must carry {MIN_KEY} to {MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(key)
}

/// The `webhook-signature` value of one delivery.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// libraries (svix/standard-webhooks, `test_sign_function`).
    #[test]
    fn signs_like_the_reference_libraries() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_malformed_secrets() {
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_not base64!").is_err());
        assert!(secret_key("whsec_c2hvcnQ=").is_err());
        let fresh = new_secret();
        assert_eq!(secret_key(&fresh).expect("fresh secret").len(), 32);
    }
}
