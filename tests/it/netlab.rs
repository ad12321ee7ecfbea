//! A real network between an agent and the test server, made of network namespaces this harness
//! creates and deletes. A link can fail two ways, neither with a reset: the agent's cable is
//! pulled (its card loses carrier, so its own kernel knows), or the router in the middle
//! silently drops everything (a black hole: neither end learns anything until it gives up). It
//! can also be slowed with `tbf` (this kernel has no `netem`).
//!
//! ```text
//!  host namespace    <lab>-s                 <lab>-r (router)              <lab>-a
//!  TestApp  <------  forwarder       <--->   10.213.0.2 | 10.213.0.5  <--->  fleetrun-agent
//!  127.0.0.1:P       10.213.0.1:Q                                          10.213.0.6
//! ```
//!
//! The forwarder's listening socket is created by a thread that joined `<lab>-s` (a socket
//! keeps the namespace it was made in), and its upstream sockets are made by the test's runtime
//! in the host namespace, so nothing of the host's own network is configured or shaped. The
//! agent runs under `ip netns exec <lab>-a`. Only [`Lab`] touches namespaces; it depends on
//! `helpers` for the agent's arguments alone.

use crate::helpers::{AgentProcess, TestApp, agent_command, eventually};
use fleetrun::protocol::PROTOCOL_VERSION;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::{JoinHandle, JoinSet};

/// The forwarder's address, in `<lab>-s`.
const SERVER_SIDE: &str = "10.213.0.1";
/// The agent's address, in `<lab>-a`, as the server sees it among the instance's addresses.
pub const AGENT_SIDE: &str = "10.213.0.6";
/// The agent's veth end, and the router's end facing it (names are per namespace, so labs
/// never collide).
const AGENT_VETH: &str = "fr-a";
const ROUTER_TO_AGENT: &str = "fr-ra";

/// How a link fails; neither way sends a reset.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The agent's cable is pulled: the router's end goes down and the agent's card loses its
    /// carrier. The agent's own kernel knows (its packets fail at the card), so its TCP keeps
    /// probing and resumes the moment the cable is back.
    PulledCable,
    /// The router stops forwarding and drops every packet in silence (a router without
    /// forwarding sends no ICMP), so neither end learns anything: TCP retransmits with its
    /// growing backoff, and new connections hang.
    BlackHole,
}

/// Three namespaces in a row, a forwarder to the test server, and what runs inside them; all
/// of it killed and deleted on drop, a failed test's too. Every lab has its own namespaces, so
/// labs of tests running in parallel never see each other.
pub struct Lab {
    server_ns: String,
    router_ns: String,
    agent_ns: String,
    /// `http://10.213.0.1:Q`, the server as the agent sees it.
    pub url: String,
    forwarder: JoinHandle<()>,
}

impl Lab {
    /// Builds the lab in front of `app`, or says why not and returns `None` when this machine
    /// refuses to create network namespaces (not root, no `ip`): the only reason to skip.
    /// Every other failure to build it panics.
    pub async fn start(app: &TestApp, test: &str) -> Option<Lab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("frlab-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let server_ns = format!("{name}-s");
        if let Err(refusal) = try_ip(&["netns", "add", &server_ns]) {
            // Any other failure is a failure: a skip must not hide a broken harness.
            let refused = ["cannot run ip", "not permitted", "Permission denied"];
            assert!(
                refused.iter().any(|r| refusal.contains(r)),
                "ip netns add {server_ns}: {refusal}"
            );
            // Straight to stderr, past the test harness's capture, so a passing run shows it.
            let _ = writeln!(
                io::stderr(),
                "SKIPPED {test}: this machine refuses network namespaces ({refusal}); the TCP-proxy tests still run"
            );
            return None;
        }
        remove_stale_labs();
        // From here on every namespace made is deleted by the guard, whatever fails next.
        let mut lab = Lab {
            server_ns,
            router_ns: format!("{name}-r"),
            agent_ns: format!("{name}-a"),
            url: String::new(),
            forwarder: tokio::spawn(async {}),
        };
        let (s, r, a) = (&lab.server_ns, &lab.router_ns, &lab.agent_ns);
        ip(&["netns", "add", r]);
        ip(&["netns", "add", a]);
        ip(&[
            "-n", s, "link", "add", "fr-s", "type", "veth", "peer", "name", "fr-rs", "netns", r,
        ]);
        ip(&[
            "-n",
            a,
            "link",
            "add",
            AGENT_VETH,
            "type",
            "veth",
            "peer",
            "name",
            ROUTER_TO_AGENT,
            "netns",
            r,
        ]);
        for (ns, veth, address) in [
            (s, "fr-s", "10.213.0.1/30"),
            (r, "fr-rs", "10.213.0.2/30"),
            (r, ROUTER_TO_AGENT, "10.213.0.5/30"),
            (a, AGENT_VETH, "10.213.0.6/30"),
        ] {
            ip(&["-n", ns, "addr", "add", address, "dev", veth]);
            ip(&["-n", ns, "link", "set", veth, "up"]);
        }
        for ns in [s, r, a] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", s, "route", "add", "10.213.0.4/30", "via", "10.213.0.2"]);
        ip(&["-n", a, "route", "add", "10.213.0.0/30", "via", "10.213.0.5"]);
        lab.set_forwarding(true);
        let upstream = app.url.trim_start_matches("http://").to_string();
        let listener = in_namespace(&lab.server_ns, || std::net::TcpListener::bind((SERVER_SIDE, 0)))
            .await
            .expect("bind the forwarder inside the server-side namespace");
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        lab.url = format!("http://{}", listener.local_addr().unwrap());
        lab.forwarder = tokio::spawn(forward(listener, upstream));
        lab.wait_reachable().await;
        Some(lab)
    }

    /// Enrols a real agent through the link and starts it inside the agent's namespace; not
    /// waited for.
    pub async fn agent(&self, app: &TestApp) -> AgentProcess {
        let activation = app.activation("local", 1).await;
        let state = tempfile::tempdir().unwrap();
        let direct = agent_command(&self.url, Some(&activation), state.path());
        let direct = direct.as_std();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.agent_ns])
            .arg(direct.get_program())
            .args(direct.get_args())
            // The server is not on loopback as the agent sees it.
            .arg("--insecure-plaintext")
            .kill_on_drop(true);
        for (key, value) in direct.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        AgentProcess {
            child: command.spawn().expect("start fleetrun-agent inside its namespace"),
            state,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// Breaks the link the way `fault` says, until [`Lab::heal`].
    pub fn break_link(&self, fault: Fault) {
        match fault {
            Fault::PulledCable => ip(&["-n", &self.router_ns, "link", "set", ROUTER_TO_AGENT, "down"]),
            Fault::BlackHole => self.set_forwarding(false),
        }
    }

    /// Undoes [`Lab::break_link`].
    pub fn heal(&self, fault: Fault) {
        match fault {
            Fault::PulledCable => ip(&["-n", &self.router_ns, "link", "set", ROUTER_TO_AGENT, "up"]),
            Fault::BlackHole => self.set_forwarding(true),
        }
    }

    fn set_forwarding(&self, is_on: bool) {
        // /proc/sys/net is the namespace's own, as seen from inside it.
        let value = if is_on { "1" } else { "0" };
        let script = format!("echo {value} > /proc/sys/net/ipv4/ip_forward");
        ip(&["netns", "exec", &self.router_ns, "sh", "-c", &script]);
    }

    /// Limits what the agent sends to `rate` (a `tc` rate such as `1mbit`) with a token bucket
    /// (`tbf`; this kernel has no `netem`, so there is no added delay or loss, only a slow
    /// link whose queue makes the sender wait).
    pub fn slow_down(&self, rate: &str) {
        let args = [
            "-n",
            &self.agent_ns,
            "qdisc",
            "add",
            "dev",
            AGENT_VETH,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "16kbit",
            "latency",
            "200ms",
        ];
        run("tc", &args).unwrap_or_else(|e| panic!("tc {}: {e}", args.join(" ")));
    }

    /// What the shaped link did so far: bytes sent through it, and how often a packet had to
    /// wait for tokens (`overlimits`).
    pub fn shaped(&self) -> (u64, u64) {
        let args = ["-n", &self.agent_ns, "-s", "qdisc", "show", "dev", AGENT_VETH];
        let stats = run("tc", &args).unwrap_or_else(|e| panic!("tc {}: {e}", args.join(" ")));
        let text = String::from_utf8_lossy(&stats.stdout);
        let after = |word: &str| -> u64 {
            let rest = text
                .split(word)
                .nth(1)
                .unwrap_or_else(|| panic!("no {word:?} in {text}"));
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no number after {word:?} in {text}"))
        };
        (after("Sent"), after("overlimits"))
    }

    /// Whether a TCP connection from the agent's namespace reaches the forwarder now (there is
    /// no `ping` here): a broken link fails or times out.
    pub async fn reachable(&self) -> bool {
        let target: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        in_namespace(&self.agent_ns, move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
        })
        .await
        .is_ok()
    }

    /// Waits until the agent's namespace reaches the forwarder (after `restore`, say).
    pub async fn wait_reachable(&self) {
        eventually(Duration::from_secs(10), "the link to carry a connection", || async {
            self.reachable().await.then_some(())
        })
        .await;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.forwarder.abort();
        for ns in [&self.agent_ns, &self.router_ns, &self.server_ns] {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("could not delete network namespace {ns}: {e}");
            }
        }
    }
}

/// Kills what runs in a namespace of ours (the agent, and whatever its tasks left behind), then
/// deletes it, which destroys the veth pairs with an end in it.
fn remove_namespace(ns: &str) -> Result<Output, String> {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
    }
    run("ip", &["netns", "delete", ns])
}

/// Removes the labs of test processes that were killed (no unwinding, so no `Drop`): their
/// names carry the pid of a process that is gone.
fn remove_stale_labs() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name.strip_prefix("frlab-").and_then(|rest| rest.split('-').next());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = remove_namespace(name);
        }
    }
}

/// Accepts the agent's connections inside the lab and joins each to a new connection to the
/// server, made from the host namespace. Aborting it drops every connection.
async fn forward(listener: TcpListener, upstream: String) {
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        let upstream = upstream.clone();
        connections.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Runs `f` on a new thread that joined the network namespace `ns`, so that sockets `f` makes
/// belong to it. A thread of its own, never a pooled one, which would stay in there.
async fn in_namespace<T, F>(ns: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let joined = std::fs::File::open(&path)
            .and_then(|file| nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        let _ = tx.send(joined.and_then(|()| f()));
    });
    rx.await.expect("the namespace thread answers")
}

fn ip(args: &[&str]) {
    try_ip(args).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
}

fn try_ip(args: &[&str]) -> Result<Output, String> {
    run("ip", args)
}

/// Runs a program to its end; an `Err` says why it failed, with its stderr.
fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
