//! Task scripts on disk: one private file per task (`fleetrun-<task>-<random>.<ext>`, mode
//! 0700, owned by the account the task runs as), removed when the task ends.
//!
//! They live in the agent's own directory `<temp dir>/fleetrun-agent-<instance id>/`, mode 0711:
//! the accounts tasks run as can open their script by name, and nobody else can list the
//! directory. Because the directory is per instance, an agent that starts sweeps what a killed
//! run of itself left there, and never touches the live scripts of another agent sharing the
//! host and its /tmp.

use super::account::Account;
use nix::unistd::geteuid;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The directory's mode: traversable, not listable, by other users.
const DIR_MODE: u32 = 0o711;
/// How every script file name begins.
const PREFIX: &str = "fleetrun-";

/// The agent's script directory.
#[derive(Debug)]
pub struct ScriptDir {
    path: PathBuf,
}

impl ScriptDir {
    /// The directory of the agent with this instance id (a plain name), in the temp dir.
    pub fn new(instance_id: &str) -> ScriptDir {
        ScriptDir::within(&std::env::temp_dir(), instance_id)
    }

    fn within(base: &Path, instance_id: &str) -> ScriptDir {
        ScriptDir {
            path: base.join(format!("fleetrun-agent-{instance_id}")),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the scripts a previous run of this agent left (it was killed while tasks ran).
    /// Called at start, before any task runs; answers how many were removed.
    pub fn sweep(&self) -> io::Result<usize> {
        self.ensure()?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let is_script = entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX));
            if is_script && !entry.file_type()?.is_dir() && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes a task's script, readable and executable by `account` only.
    pub fn create(&self, task: &str, extension: &str, content: &str, account: &Account) -> io::Result<Script> {
        self.ensure()?;
        let mut suffix = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        let suffix = crate::protocol::hex(&suffix);
        let path = self.path.join(format!("{PREFIX}{task}-{suffix}.{extension}"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)?;
        let script = Script { path };
        file.write_all(content.as_bytes())?;
        if account.switch.is_some() {
            std::os::unix::fs::fchown(&file, Some(account.uid.as_raw()), Some(account.gid.as_raw()))?;
        }
        Ok(script)
    }

    /// Creates the directory, or checks that the one there is the agent's own: a real
    /// directory (not a link) owned by the agent's user. In a shared /tmp another user could
    /// have made it first; then scripts are refused rather than written where others reach.
    fn ensure(&self) -> io::Result<()> {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let meta = std::fs::symlink_metadata(&self.path)?;
        if !meta.is_dir() || meta.uid() != geteuid().as_raw() {
            return Err(io::Error::other(format!(
                "{} is not a directory of the agent's own user: remove it",
                self.path.display()
            )));
        }
        // The umask narrows a new directory; an old one may have been changed by hand.
        if meta.mode() & 0o7777 != DIR_MODE {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }
}

/// A task's script file, removed when dropped.
pub struct Script {
    path: PathBuf,
}

impl Script {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn scripts_are_private_in_a_directory_others_may_traverse_but_not_list() {
        let base = tempfile::tempdir().unwrap();
        let dir = ScriptDir::within(base.path(), "i-a");
        let me = Account::resolve(None).unwrap();

        let script = dir.create("t-1", "sh", "echo hi", &me).unwrap();

        assert_eq!(mode(dir.path()), 0o711);
        assert_eq!(mode(script.path()), 0o700);
        assert_eq!(std::fs::read_to_string(script.path()).unwrap(), "echo hi");
        let path = script.path().to_path_buf();
        drop(script);
        assert!(!path.exists(), "removed when the task ends");
    }

    #[test]
    fn a_sweep_removes_only_this_agents_leftover_scripts() {
        let base = tempfile::tempdir().unwrap();
        let (mine, other) = (
            ScriptDir::within(base.path(), "i-a"),
            ScriptDir::within(base.path(), "i-b"),
        );
        let me = Account::resolve(None).unwrap();
        let leftovers = [
            mine.create("t-1", "sh", "", &me).unwrap(),
            mine.create("t-2", "ps1", "", &me).unwrap(),
        ];
        let live = other.create("t-1", "sh", "", &me).unwrap();
        let kept = mine.path().join("notes.txt");
        std::fs::write(&kept, "not a script").unwrap();
        let paths: Vec<PathBuf> = leftovers.iter().map(|s| s.path().to_path_buf()).collect();
        std::mem::forget(leftovers); // as a SIGKILLed agent would: no Drop ran

        let removed = mine.sweep().unwrap();

        assert_eq!(removed, 2);
        assert!(paths.iter().all(|p| !p.exists()));
        assert!(live.path().exists(), "another agent's live script is untouched");
        assert!(kept.exists(), "only script files are swept");
    }

    #[test]
    fn a_directory_that_is_not_the_agents_own_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let dir = ScriptDir::within(base.path(), "i-a");
        std::os::unix::fs::symlink(&target, dir.path()).unwrap();
        let me = Account::resolve(None).unwrap();

        let refused = dir.create("t-1", "sh", "echo hi", &me).map(|_| ()).unwrap_err();

        assert!(refused.to_string().contains("remove it"), "{refused}");
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "nothing written through the link"
        );
    }
}
