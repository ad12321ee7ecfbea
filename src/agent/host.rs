//! Facts about the machine the agent runs on: hostname, OS name, IP addresses, interpreters.

use crate::protocol::{CommandType, OsType};

/// The machine's hostname.
pub fn hostname() -> String {
    #[cfg(unix)]
    if let Ok(name) = nix::unistd::gethostname() {
        return name.to_string_lossy().into_owned();
    }
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into())
}

/// A human name of the OS, e.g. `Debian GNU/Linux 12 (bookworm)`.
pub fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// The machine's non-loopback IP addresses (link-local IPv6 left out: it needs a scope).
pub fn ip_addresses() -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    #[cfg(unix)]
    if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
        for address in interfaces.filter_map(|i| i.address) {
            let ip: std::net::IpAddr = if let Some(v4) = address.as_sockaddr_in() {
                v4.ip().into()
            } else if let Some(v6) = address.as_sockaddr_in6() {
                let ip = v6.ip();
                if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
                ip.into()
            } else {
                continue;
            };
            if !ip.is_loopback() && !ips.contains(&ip.to_string()) {
                ips.push(ip.to_string());
            }
        }
    }
    ips
}

/// Finds an executable on the PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                candidate
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            }
            #[cfg(not(unix))]
            candidate.is_file()
        })
}

/// The command types this machine can run.
pub fn supported_command_types() -> Vec<CommandType> {
    match OsType::current() {
        OsType::Linux => {
            let mut types = vec![CommandType::RunShellScript];
            if which("pwsh").is_some() {
                types.push(CommandType::RunPowerShellScript);
            }
            types
        }
        OsType::Windows => vec![CommandType::RunBatScript, CommandType::RunPowerShellScript],
    }
}

/// The machine's boot id, read from `file` (Linux: `/proc/sys/kernel/random/boot_id`, new at
/// every boot); `None` where there is none or it is not a plausible id.
pub fn boot_id(file: &std::path::Path) -> Option<String> {
    let id = std::fs::read_to_string(file).ok()?.trim().to_string();
    let plausible = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic());
    plausible.then_some(id)
}
