use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetd_schemas::{DeviceId, Principal, Scope};
use fleetd_store::FjallStore;
use tempfile::TempDir;

use crate::{Access, AccessSettings, Identity, LoginError, admin_token, reset_admin_token};

async fn access() -> (TempDir, Arc<Access>) {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(dir.path()).unwrap());
    let access = Access::open(store, AccessSettings::default())
        .await
        .unwrap();
    (dir, Arc::new(access))
}

fn device(id: &str) -> Principal {
    Principal::Device(DeviceId::parse(id).unwrap())
}

const PEER: Option<IpAddr> = None;

#[tokio::test]
async fn a_device_logs_in_with_its_secret_only() {
    let (_dir, access) = access().await;
    let issued = access
        .issue_credentials(&[device("truck-1")])
        .await
        .unwrap();
    let cred = &issued[0];
    assert_eq!(cred.username, "truck-1");
    assert!(cred.password.len() >= 32, "at least 128 bits");
    let who = access
        .login(Some("truck-1"), Some(&cred.password), PEER)
        .await
        .unwrap();
    assert_eq!(who, Identity::Device(DeviceId::parse("truck-1").unwrap()));
    for (user, pass) in [
        (Some("truck-1"), Some("wrong")),
        (Some("truck-2"), Some(cred.password.as_str())),
        (None, Some(cred.password.as_str())),
    ] {
        assert!(matches!(
            access.login(user, pass, PEER).await,
            Err(LoginError::Wrong | LoginError::NoCredentials)
        ));
    }
    assert!(matches!(
        access.login(Some("truck-1"), None, PEER).await,
        Err(LoginError::NoCredentials)
    ));
}

#[tokio::test]
async fn rotation_refuses_the_old_secret_and_closes_its_sessions() {
    let (_dir, access) = access().await;
    let old = access.issue_credentials(&[device("t")]).await.unwrap()[0].clone();
    let who = access
        .login(Some("t"), Some(&old.password), PEER)
        .await
        .unwrap();
    let session_closed = access.watch(&who);
    let new = access.issue_credentials(&[device("t")]).await.unwrap()[0].clone();
    tokio::time::timeout(Duration::from_secs(1), session_closed)
        .await
        .expect("the open session is told to close");
    assert!(
        access
            .login(Some("t"), Some(&old.password), PEER)
            .await
            .is_err()
    );
    assert!(
        access
            .login(Some("t"), Some(&new.password), PEER)
            .await
            .is_ok()
    );

    let still_open = access.watch(&who);
    assert!(access.revoke_credential(&device("t")).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), still_open)
        .await
        .expect("revocation closes sessions");
    assert!(
        access
            .login(Some("t"), Some(&new.password), PEER)
            .await
            .is_err()
    );
    assert!(!access.revoke_credential(&device("t")).await.unwrap());
}

#[tokio::test]
async fn other_principals_sessions_stay_open() {
    let (_dir, access) = access().await;
    let creds = access
        .issue_credentials(&[device("a"), device("b")])
        .await
        .unwrap();
    let a = access
        .login(Some("a"), Some(&creds[0].password), PEER)
        .await
        .unwrap();
    let mut watch_a = Box::pin(access.watch(&a));
    access.issue_credentials(&[device("b")]).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut watch_a)
            .await
            .is_err(),
        "rotating b leaves a's session alone"
    );
}

#[tokio::test]
async fn an_owntracks_user_and_a_device_of_the_same_name_are_distinct() {
    let (_dir, access) = access().await;
    let user = Principal::user("alice").unwrap();
    let issued = access
        .issue_credentials(std::slice::from_ref(&user))
        .await
        .unwrap();
    let who = access
        .login(Some("alice"), Some(&issued[0].password), PEER)
        .await
        .unwrap();
    assert_eq!(who, Identity::User("alice".into()));
    let device = access.issue_credentials(&[device("alice")]).await.unwrap();
    let who = access
        .login(Some("alice"), Some(&device[0].password), PEER)
        .await
        .unwrap();
    assert_eq!(who, Identity::Device(DeviceId::parse("alice").unwrap()));
    // Both secrets work: each names its own principal.
    assert!(
        access
            .login(Some("alice"), Some(&issued[0].password), PEER)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn bulk_issue_writes_thousands_at_once() {
    let (_dir, access) = access().await;
    let principals: Vec<Principal> = (0..5000).map(|i| device(&format!("d{i}"))).collect();
    let issued = access.issue_credentials(&principals).await.unwrap();
    assert_eq!(issued.len(), 5000);
    let last = &issued[4999];
    assert!(
        access
            .login(Some(&last.username), Some(&last.password), PEER)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn tokens_carry_scopes_expire_and_revoke() {
    let (_dir, access) = access().await;
    let read = access
        .create_token("dash", &[Scope::Read], None)
        .await
        .unwrap();
    assert!(read.token.starts_with("fltd_"));
    let who = access.bearer(&read.token).unwrap();
    assert!(who.has_scope(Scope::Read));
    assert!(!who.has_scope(Scope::Write));
    // A token is also an MQTT password, whatever the user name.
    assert_eq!(
        access
            .login(Some("dashboard"), Some(&read.token), PEER)
            .await
            .unwrap(),
        who
    );
    let listed = access.tokens();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "dash");

    let short = access
        .create_token("short", &[Scope::Write], Some(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        access.bearer(&short.token),
        Err(LoginError::Expired)
    ));

    let session = access.watch(&who);
    assert!(access.revoke_token(&read.record.id).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), session)
        .await
        .unwrap();
    assert!(matches!(access.bearer(&read.token), Err(LoginError::Wrong)));
    assert!(access.bearer("fltd_nope_nope").is_err());
    assert!(access.create_token("none", &[], None).await.is_err());
}

#[tokio::test]
async fn tokens_survive_a_reopen_and_refresh_sees_other_nodes() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(dir.path()).unwrap());
    let one = Access::open(store.clone(), AccessSettings::default())
        .await
        .unwrap();
    let two = Access::open(store, AccessSettings::default())
        .await
        .unwrap();
    let t = one.create_token("x", &[Scope::Admin], None).await.unwrap();
    assert!(two.bearer(&t.token).is_err(), "not yet refreshed");
    two.refresh_tokens().await.unwrap();
    assert!(two.bearer(&t.token).unwrap().has_scope(Scope::Admin));
    one.revoke_token(&t.record.id).await.unwrap();
    two.refresh_tokens().await.unwrap();
    assert!(two.bearer(&t.token).is_err());
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(dir.path()).unwrap());
    let settings = AccessSettings {
        max_failed_logins_per_minute: 3,
        ..AccessSettings::default()
    };
    let access = Access::open(store, settings).await.unwrap();
    let cred = access.issue_credentials(&[device("t")]).await.unwrap()[0].clone();
    let attacker: IpAddr = [192, 0, 2, 1].into();
    let other: IpAddr = [192, 0, 2, 2].into();
    for _ in 0..3 {
        assert!(matches!(
            access.login(Some("t"), Some("guess"), Some(attacker)).await,
            Err(LoginError::Wrong)
        ));
    }
    assert!(matches!(
        access
            .login(Some("t"), Some(&cred.password), Some(attacker))
            .await,
        Err(LoginError::Throttled)
    ));
    assert!(
        access
            .login(Some("t"), Some(&cred.password), Some(other))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn anonymous_mode_lets_everyone_in() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(FjallStore::open(dir.path()).unwrap());
    let settings = AccessSettings {
        allow_anonymous: true,
        ..AccessSettings::default()
    };
    let access = Access::open(store, settings).await.unwrap();
    assert_eq!(
        access.login(None, None, PEER).await.unwrap(),
        Identity::Anonymous
    );
    assert_eq!(access.bearer("anything").unwrap(), Identity::Anonymous);
}

#[tokio::test]
async fn the_admin_token_file_is_private_and_kept() {
    let (dir, access) = access().await;
    let first = admin_token(&access, dir.path()).await.unwrap();
    assert!(first.created);
    assert!(access.bearer(&first.token).unwrap().has_scope(Scope::Admin));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = admin_token(&access, dir.path()).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.token, first.token);

    let reset = reset_admin_token(&access, dir.path()).await.unwrap();
    assert_ne!(reset.token, first.token);
    assert!(access.bearer(&first.token).is_err());
    assert_eq!(
        std::fs::read_to_string(&reset.path).unwrap().trim(),
        reset.token
    );
}
