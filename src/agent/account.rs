//! The account a task runs as on this machine: looked up by name (or the agent's own), with
//! what the child needs to switch to it. Everything is read before `fork`: looking users and
//! groups up (NSS, files) is not safe between `fork` and `exec` in a multithreaded process.

use nix::unistd::{Gid, Uid, User, geteuid, getgrouplist, setgid, setgroups, setuid};
use std::ffi::CString;
use std::path::PathBuf;

/// Why an account cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the user {0} does not exist on this instance")]
    NotExists(String),
    #[error(
        "the agent does not run as root, so it cannot run commands as {0}: run the agent as root or leave Username empty"
    )]
    NotRoot(String),
}

/// The account a task runs as.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub home: Option<PathBuf>,
    pub shell: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Set when the agent (as root) must switch to another user in the child.
    pub switch: Option<Switch>,
}

/// What the child does before `exec` to become another user.
#[derive(Debug, Clone)]
pub struct Switch {
    uid: Uid,
    gid: Gid,
    /// The user's groups, looked up before forking.
    groups: Vec<Gid>,
    /// The same, as the kernel takes them (`spawn` makes the system calls itself).
    raw_groups: Vec<nix::libc::gid_t>,
}

impl Switch {
    fn new(user: &User) -> Switch {
        let groups = CString::new(user.name.as_str())
            .ok()
            .and_then(|name| getgrouplist(&name, user.gid).ok())
            .filter(|groups| !groups.is_empty())
            .unwrap_or_else(|| vec![user.gid]);
        Switch {
            uid: user.uid,
            gid: user.gid,
            raw_groups: groups.iter().map(|g| g.as_raw()).collect(),
            groups,
        }
    }

    /// The user, group and groups to switch to, as raw ids.
    pub fn ids(&self) -> (nix::libc::uid_t, nix::libc::gid_t, &[nix::libc::gid_t]) {
        (self.uid.as_raw(), self.gid.as_raw(), &self.raw_groups)
    }

    /// Runs in the child between `fork` and `exec`: only async-signal-safe calls (plain
    /// system calls on data prepared before the fork, no allocation).
    pub fn apply(&self) -> std::io::Result<()> {
        setgroups(&self.groups)?;
        setgid(self.gid)?;
        setuid(self.uid)?;
        Ok(())
    }
}

impl Account {
    /// The account named `username`, or the agent's own when none is given.
    pub fn resolve(username: Option<&str>) -> Result<Account, Error> {
        let euid = geteuid();
        let Some(name) = username else {
            let me = User::from_uid(euid).ok().flatten();
            return Ok(match me {
                Some(me) => Account::from_user(me, None),
                None => Account {
                    name: String::new(),
                    home: None,
                    shell: "/bin/sh".into(),
                    uid: euid,
                    gid: Gid::from_raw(0),
                    switch: None,
                },
            });
        };
        let user = User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| Error::NotExists(name.to_string()))?;
        if user.uid == euid {
            return Ok(Account::from_user(user, None));
        }
        if !euid.is_root() {
            return Err(Error::NotRoot(name.to_string()));
        }
        let switch = Switch::new(&user);
        Ok(Account::from_user(user, Some(switch)))
    }

    fn from_user(user: User, switch: Option<Switch>) -> Account {
        let shell = user.shell.to_string_lossy().into_owned();
        Account {
            home: Some(user.dir).filter(|d| !d.as_os_str().is_empty()),
            shell: if shell.is_empty() { "/bin/sh".into() } else { shell },
            uid: user.uid,
            gid: user.gid,
            name: user.name,
            switch,
        }
    }

    /// The explicit environment of a task: nothing of the agent's leaks in but the locale.
    pub fn environment(&self, task: &str) -> Vec<(String, String)> {
        let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
        let home = self
            .home
            .as_ref()
            .map(|h| h.display().to_string())
            .unwrap_or_else(|| "/".into());
        vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), home),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            ("SHELL".into(), self.shell.clone()),
            ("LANG".into(), lang),
            ("FLEETRUN_INVOKE_ID".into(), task.into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_account_and_an_unknown_one() {
        let me = Account::resolve(None).unwrap();
        assert_eq!(me.uid, geteuid());
        assert!(me.switch.is_none());
        assert!(matches!(
            Account::resolve(Some("no-such-user-42")),
            Err(Error::NotExists(_))
        ));
    }
}
