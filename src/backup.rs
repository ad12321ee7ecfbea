//! `fleetrun backup` and `fleetrun restore`: a consistent copy of the SQLite store taken while
//! the server serves, and its way back, checked. PostgreSQL has its own tools; for it both
//! print the pg_dump or pg_restore command to run.

use crate::config::{BackupArgs, DatabaseArgs, RestoreArgs};
use crate::files::with_suffix;
use crate::store::backup::{check_sqlite, vacuum_into};
use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// Exit code when nothing was done because another tool does it (PostgreSQL).
const NOT_DONE: i32 = 2;

/// `fleetrun backup`: copies the database to `--to` (0600) and checks the copy.
pub async fn backup(args: BackupArgs) -> anyhow::Result<i32> {
    let Some(db) = sqlite_database(&args.database, "back up")? else {
        let url = redacted(&args.database.database_url());
        eprintln!(
            "fleetrun backup copies SQLite databases only; back up PostgreSQL with pg_dump:\n  \
             pg_dump --format=custom --file={} '{url}'\n(with the password in PGPASSWORD or ~/.pgpass)",
            quote(&args.to)
        );
        return Ok(NOT_DONE);
    };
    anyhow::ensure!(
        db.is_file(),
        "there is no database at {}: give the server's --data-dir (or --database-url, or --config)",
        db.display()
    );
    if args.to.exists() && !args.force {
        anyhow::bail!(
            "{} exists: give another file, or --force to replace it",
            args.to.display()
        );
    }
    // Written beside the target under another name, then renamed: a failed or interrupted
    // backup never leaves a partial file under the name asked for.
    let partial = with_suffix(&args.to, &format!(".partial-{}", std::process::id()));
    create_private(&partial)?;
    let copied = async {
        vacuum_into(&db, &partial)
            .await
            .with_context(|| format!("cannot copy {} to {}", db.display(), partial.display()))?;
        let checked = check_sqlite(&partial)
            .await
            .with_context(|| format!("the copy {} failed its check", partial.display()))?;
        std::fs::File::open(&partial)?.sync_all()?;
        if args.to.exists() && !args.force {
            anyhow::bail!("{} appeared while the backup ran; nothing replaced", args.to.display());
        }
        std::fs::rename(&partial, &args.to)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), args.to.display()))?;
        anyhow::Ok(checked)
    }
    .await;
    // SQLite makes a stopped server's -wal and -shm files again to read it: root's, they
    // would keep the server from opening its database.
    give_to_owner_of(&db, &[&with_suffix(&db, "-wal"), &with_suffix(&db, "-shm")])?;
    let checked = match copied {
        Ok(checked) => checked,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let size = std::fs::metadata(&args.to).map(|m| m.len()).unwrap_or(0);
    println!(
        "fleetrun: backed up {} to {} ({size} bytes, mode 0600, integrity ok, {} migrations)",
        db.display(),
        args.to.display(),
        checked.applied
    );
    println!(
        "fleetrun: keep the server's secret key file (--secret-key-file, by default {}) with it: \
         AccessKey secrets in the backup are sealed with that key",
        args.database.data_dir.join("secret.key").display()
    );
    Ok(0)
}

/// `fleetrun restore`: checks the backup, then, with no server using the database, moves the
/// database aside and puts the backup in its place.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<i32> {
    let Some(db) = sqlite_database(&args.database, "restore")? else {
        let url = redacted(&args.database.database_url());
        eprintln!(
            "fleetrun restore restores SQLite databases only; restore a PostgreSQL dump with pg_restore, \
             the servers stopped:\n  pg_restore --clean --if-exists --no-owner --dbname='{url}' {}\n\
             (with the password in PGPASSWORD or ~/.pgpass)",
            quote(&args.from)
        );
        return Ok(NOT_DONE);
    };
    anyhow::ensure!(args.from.is_file(), "there is no backup file {}", args.from.display());
    let checked = check_sqlite(&args.from)
        .await
        .with_context(|| format!("{} cannot be restored", args.from.display()))?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir == args.database.data_dir {
        crate::files::create_private_dir(dir, &[])?;
    }
    anyhow::ensure!(dir.is_dir(), "the directory {} does not exist", dir.display());
    let Some(_lock) = crate::files::lock_database(&db, true)? else {
        anyhow::bail!(
            "a fleetrun server is using {}: stop it first (systemctl stop fleetrun), then restore",
            db.display()
        );
    };

    // The restored file goes in under a temporary name first, so that the database is either
    // the old one or the whole backup, never part of it.
    let incoming = with_suffix(&db, ".restoring");
    let _ = std::fs::remove_file(&incoming);
    create_private(&incoming)?;
    let copied = (|| {
        let mut from = std::fs::File::open(&args.from)?;
        let mut to = std::fs::OpenOptions::new().write(true).open(&incoming)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&incoming);
        return Err(e).with_context(|| format!("cannot copy {} to {}", args.from.display(), incoming.display()));
    }

    // The old database with its WAL (committed writes not yet in the main file) and shared
    // memory, renamed together so that the set stays openable.
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut aside = with_suffix(&db, &format!(".before-restore-{stamp}"));
    // Two restores within a second must not put the second aside over the first.
    for n in 2.. {
        if !aside.exists() {
            break;
        }
        aside = with_suffix(&db, &format!(".before-restore-{stamp}-{n}"));
    }
    let mut kept = None;
    if db.exists() {
        for suffix in ["", "-wal", "-shm"] {
            let (old, new) = (with_suffix(&db, suffix), with_suffix(&aside, suffix));
            if old.exists() {
                std::fs::rename(&old, &new)
                    .with_context(|| format!("cannot move {} to {}", old.display(), new.display()))?;
            }
        }
        kept = Some(aside);
    }
    std::fs::rename(&incoming, &db)
        .with_context(|| format!("cannot rename {} to {}", incoming.display(), db.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    give_to_owner_of(dir, &[&db, &with_suffix(&db, ".lock")])?;

    println!(
        "fleetrun: restored {} into {} (integrity ok, {} migrations{})",
        args.from.display(),
        db.display(),
        checked.applied,
        match checked.pending {
            0 => String::new(),
            n => format!("; the server applies {n} newer ones when it starts"),
        }
    );
    match kept {
        Some(aside) => println!(
            "fleetrun: the previous database is now {} (delete it once the restored server works)",
            aside.display()
        ),
        None => println!("fleetrun: there was no database there before"),
    }
    println!(
        "fleetrun: the server needs the secret key file of the server that made the backup \
         (--secret-key-file, by default {}); start it: systemctl start fleetrun",
        args.database.data_dir.join("secret.key").display()
    );
    Ok(0)
}

/// The SQLite file of the database arguments, or `None` for PostgreSQL.
fn sqlite_database(args: &DatabaseArgs, what: &str) -> anyhow::Result<Option<PathBuf>> {
    let url = args.database_url();
    if url.starts_with("postgres") {
        return Ok(None);
    }
    match args.sqlite_file() {
        Some(file) => Ok(Some(file)),
        None => anyhow::bail!("{url} is an in-memory database: there is nothing to {what}"),
    }
}

/// Creates an empty file readable by its owner only: SQLite and the copy write into it and
/// keep its mode.
fn create_private(path: &Path) -> anyhow::Result<()> {
    crate::files::create_new_private(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

/// Root working for the `fleetrun` user: the files it made go to the owner of `dir` (the data
/// directory, or the database), or the server could not open them.
fn give_to_owner_of(dir: &Path, files: &[&Path]) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let owner = std::fs::metadata(dir)?;
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(owner.uid()),
            nix::unistd::Gid::from_raw(owner.gid()),
        );
        for file in files.iter().filter(|f| f.exists()) {
            nix::unistd::chown(*file, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to the owner of {}", file.display(), dir.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, files);
    Ok(())
}

/// A path for a shell command line, quoted when it needs to be.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=".contains(c)) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The URL without its password, which pg_dump then takes from PGPASSWORD or ~/.pgpass: the
/// command is printed, and may end up in a log.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
