//! Which file events wake a watcher.

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind};

use super::relevant;

#[test]
fn own_reads_do_not_trigger_reloads_but_writes_and_renames_do() {
    let ignored = [
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
    ];
    let wanted = [
        EventKind::Access(AccessKind::Close(AccessMode::Write)),
        EventKind::Create(CreateKind::File),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        EventKind::Modify(ModifyKind::Any),
        EventKind::Remove(notify::event::RemoveKind::Any),
    ];
    for kind in ignored {
        assert!(!relevant(&Event::new(kind)), "{kind:?}");
    }
    for kind in wanted {
        assert!(relevant(&Event::new(kind)), "{kind:?}");
    }
}

#[test]
fn a_file_and_its_symlink_target_are_followed_by_their_directories() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("..2024_01_01");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("tls.crt"), b"x").unwrap();
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink(&real, &data).unwrap();
    let link = dir.path().join("tls.crt");
    std::os::unix::fs::symlink(data.join("tls.crt"), &link).unwrap();
    let dirs = super::dirs_of([link.as_path()]);
    let want: std::collections::HashSet<_> = [
        dir.path().to_path_buf(),
        std::fs::canonicalize(&real).unwrap(),
    ]
    .into();
    assert_eq!(dirs, want);
    assert_eq!(
        super::dirs_of([std::path::Path::new("postern.toml")]),
        [std::path::PathBuf::from(".")].into()
    );
}
