//! Facts about the machine the agent runs on: hostname, OS name, IP addresses, interpreters.

use crate::protocol::{CommandType, OsType};

/// The machine's hostname.
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
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

/// The machine's non-loopback IP addresses.
pub fn ip_addresses() -> Vec<String> {
    let mut ips = Vec::new();
    #[cfg(unix)]
    {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a linked list we only read and then free.
        if unsafe { libc::getifaddrs(&mut list) } == 0 {
            let mut cursor = list;
            while !cursor.is_null() {
                // SAFETY: `cursor` is a node of the list returned by getifaddrs.
                let entry = unsafe { &*cursor };
                if let Some(ip) = unsafe { sockaddr_ip(entry.ifa_addr) } {
                    if !ip.is_loopback() && !ips.contains(&ip.to_string()) {
                        ips.push(ip.to_string());
                    }
                }
                cursor = entry.ifa_next;
            }
            // SAFETY: `list` came from getifaddrs and is freed once.
            unsafe { libc::freeifaddrs(list) };
        }
    }
    ips
}

/// # Safety
/// `addr` is null or points to a valid sockaddr of the family it names.
#[cfg(unix)]
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<std::net::IpAddr> {
    if addr.is_null() {
        return None;
    }
    match i32::from(unsafe { (*addr).sa_family }) {
        libc::AF_INET => {
            let v4 = unsafe { &*(addr as *const libc::sockaddr_in) };
            Some(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into())
        }
        libc::AF_INET6 => {
            let v6 = unsafe { &*(addr as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            // Link-local addresses need a scope to be useful; leave them out.
            (ip.segments()[0] & 0xffc0 != 0xfe80).then_some(ip.into())
        }
        _ => None,
    }
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
