//! tls.key_permissions: strict refuses a group/other-accessible key, warn loads it.

use postern_config::KeyPermissions;
use postern_tls::{Tls, TlsError};

use crate::support::{self, pair, write};

#[test]
fn strict_refuses_warn_loads() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(&["perm.test"]);
    let cert = write(dir.path(), "cert.pem", &p.cert_pem, 0o644);
    let key = write(dir.path(), "key.pem", &p.key_pem, 0o640);
    let mut config = support::config(&[(cert.clone(), Some(key.clone()))]);

    config.key_permissions = KeyPermissions::Strict;
    let err = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap_err();
    assert!(
        matches!(err, TlsError::KeyPermissions { mode: 0o640, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for needle in [
        key.display().to_string(),
        "0640".to_owned(),
        format!("chmod 600 {}", key.display()),
        format!("(owner {})", me()),
        "chown".to_owned(),
    ] {
        assert!(msg.contains(&needle), "{msg:?} lacks {needle:?}");
    }

    config.key_permissions = KeyPermissions::Warn;
    let lines = Tls::check(&config, dir.path()).unwrap();
    let warning = lines
        .iter()
        .find(|l| l.contains("0640"))
        .expect("a permission warning");
    assert!(
        warning.contains(&format!("chmod 600 {}", key.display())),
        "{warning}"
    );
    Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();

    // A combined file holds the key, so its mode is what counts.
    let combined = write(
        dir.path(),
        "combined.pem",
        format!("{}{}", p.cert_pem, p.key_pem),
        0o604,
    );
    let mut config = support::config(&[(combined.clone(), None)]);
    config.key_permissions = KeyPermissions::Strict;
    let err = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap_err();
    assert!(
        err.to_string().contains(&combined.display().to_string()),
        "{err}"
    );

    // 0600 and 0400 pass strict.
    for mode in [0o600, 0o400] {
        let key = write(dir.path(), &format!("key{mode:o}.pem"), &p.key_pem, mode);
        let mut config = support::config(&[(cert.clone(), Some(key))]);
        config.key_permissions = KeyPermissions::Strict;
        Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    }
}

#[test]
fn strict_on_reload_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old = pair(&["perm.test"]);
    let cert = write(dir.path(), "cert.pem", &old.cert_pem, 0o644);
    let key = write(dir.path(), "key.pem", &old.key_pem, 0o600);
    let mut config = support::config(&[(cert.clone(), Some(key.clone()))]);
    config.key_permissions = KeyPermissions::Strict;
    let metrics = support::metrics();
    let tls = Tls::load(&config, dir.path(), metrics.tls()).unwrap();
    let new = pair(&["perm.test"]);
    write(dir.path(), "key.pem", &new.key_pem, 0o644);
    write(dir.path(), "cert.pem", &new.cert_pem, 0o644);
    assert!(matches!(
        tls.reload_now(),
        Err(TlsError::KeyPermissions { .. })
    ));
    assert_eq!(support::reloads(&metrics, "error"), 1);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(
        tls.reload_now().unwrap(),
        "fixing the mode lets the new pair in"
    );
    assert_eq!(support::reloads(&metrics, "ok"), 1);
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .map(|u| u.name)
        .unwrap()
}
