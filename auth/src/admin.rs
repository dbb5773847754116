//! The admin token of first start, kept in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use fleetd_schemas::Scope;

use crate::{Access, AccessError};

/// The file in the data directory that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The name the admin token is stored under.
const ADMIN_TOKEN_NAME: &str = "admin (admin.token)";

/// The admin token and whether this start made it.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// The token string (`fltd_…`).
    pub token: String,
    /// True when it was created now (first start or reset).
    pub created: bool,
    /// The file it is kept in.
    pub path: PathBuf,
}

/// Reads `admin.token` from `data_dir`, or, when it is missing or no longer
/// valid (revoked, or the store was replaced), creates an admin token and
/// writes it there with mode 0600.
pub async fn admin_token(access: &Access, data_dir: &Path) -> Result<AdminToken, AccessError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if access.token(&token).is_ok() {
                return Ok(AdminToken {
                    token,
                    created: false,
                    path,
                });
            }
            tracing::warn!(file = %path.display(), "admin token file holds no valid token; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AccessError::AdminFile { path, source }),
    }
    create(access, path).await
}

/// Revokes every token named as the admin token and writes a fresh one
/// (`fleetd token reset-admin`).
pub async fn reset_admin_token(
    access: &Access,
    data_dir: &Path,
) -> Result<AdminToken, AccessError> {
    for token in access.tokens() {
        if token.name == ADMIN_TOKEN_NAME {
            access.revoke_token(&token.id).await?;
        }
    }
    create(access, data_dir.join(ADMIN_TOKEN_FILE)).await
}

async fn create(access: &Access, path: PathBuf) -> Result<AdminToken, AccessError> {
    let issued = access
        .create_token(ADMIN_TOKEN_NAME, &[Scope::Admin], None)
        .await?;
    write_private(&path, &issued.token).map_err(|source| AccessError::AdminFile {
        path: path.clone(),
        source,
    })?;
    Ok(AdminToken {
        token: issued.token,
        created: true,
        path,
    })
}

/// Writes `text` to a file only its owner can read, replacing it atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("token.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    #[cfg(unix)]
    {
        // `mode` applies only when the file is created; a stale tmp file
        // might have other bits.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(file, "{text}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
