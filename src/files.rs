//! Files and directories readable by their owner only: the server's data directory and
//! database, the admin's initial password, the agent's credential and spool.
//!
//! Each is created private, and an existing one that other users may read is tightened with a
//! warning: it may have been made by an older version, or by hand.

use anyhow::Context as _;
use std::path::Path;
#[cfg(feature = "server")]
use std::path::PathBuf;

/// `path` with `suffix` added to its file name: `fleetrun.db` → `fleetrun.db-wal`.
#[cfg(feature = "server")]
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens a new, empty file with mode 0600; fails if `path` exists.
#[cfg(feature = "server")]
pub fn create_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes a file with mode 0600, replacing any previous content.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only when the file is new.
    tighten(path, 0o600)?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates a directory with mode 0700 (its missing parents with the usual mode), or tightens
/// an existing one to it when it is fleetrun's own: empty, or holding one of `ours` (the names
/// fleetrun keeps there). A directory holding other things (`/var/lib`, a home directory given
/// by mistake) keeps its mode, with a warning, rather than being closed to its other users. An
/// empty `ours` means the directory is fleetrun's by construction (inside one of its own).
pub fn create_private_dir(dir: &Path, ours: &[&str]) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let is_ours = ours.is_empty() || entries.next().is_none() || ours.iter().any(|name| dir.join(name).exists());
    if is_ours {
        tighten(dir, 0o700)
    } else {
        tracing::warn!(
            path = %dir.display(),
            "this directory holds files that are not fleetrun's, so its mode is left as it is; \
             give fleetrun a directory of its own to keep its files private"
        );
        Ok(())
    }
}

/// Makes the SQLite database `db` private (0600): creates it empty when it does not exist, so
/// that SQLite (which would create it 0644) opens ours, and tightens it and its `-wal`, `-shm`
/// and `-journal` files when they exist. SQLite creates those with the database's mode.
#[cfg(feature = "server")]
pub fn create_private_database(db: &Path) -> anyhow::Result<()> {
    match create_new_private(db) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create the database {}", db.display())),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = with_suffix(db, suffix);
        if path.exists() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Sets `path` to `mode`, warning when group or other users had access to it.
fn tighten(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let old = std::fs::metadata(path)
            .with_context(|| format!("cannot read the mode of {}", path.display()))?
            .permissions()
            .mode()
            & 0o7777;
        if old == mode {
            return Ok(());
        }
        if old & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                old_mode = format!("{old:04o}"),
                new_mode = format!("{mode:04o}"),
                "other users had access to a private file; tightening its mode"
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {} to {mode:04o}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// A lock on the SQLite database `db`, through the file `<db>.lock` beside it: each serving
/// process holds it shared for as long as it runs, `fleetrun restore` exclusively while it
/// swaps the file. `Ok(None)`: another process holds it the other way.
#[cfg(all(feature = "server", unix))]
pub fn lock_database(db: &Path, exclusive: bool) -> anyhow::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = with_suffix(db, ".lock");
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let how = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, e)) if e == nix::errno::Errno::EWOULDBLOCK => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}
