//! A real network between an agent and the test server, made of two network namespaces this
//! harness creates and deletes: the link between them can be cut (packets vanish, no RST, as
//! when a cable is pulled) and restored, or slowed with `tbf`.
//!
//! ```text
//!  host namespace          namespace <lab>-s                namespace <lab>-a
//!  TestApp 127.0.0.1:P  <- forwarder 10.213.0.1:Q  <-veth->  fleetrun-agent (10.213.0.2)
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

/// The forwarder's address inside `<lab>-s`, and the agent's inside `<lab>-a`. Every lab has
/// its own pair of namespaces, so labs of tests running in parallel never see each other.
const SERVER_SIDE: &str = "10.213.0.1";
const AGENT_SIDE: &str = "10.213.0.2";
/// The veth ends, one in each namespace (names are per namespace, so they never collide).
const SERVER_VETH: &str = "fr-s";
const AGENT_VETH: &str = "fr-a";

/// Two namespaces joined by a veth pair, a forwarder to the test server, and what runs inside
/// them; all of it killed and deleted on drop, a failed test's too.
pub struct Lab {
    server_ns: String,
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
        let (server_ns, agent_ns) = (format!("{name}-s"), format!("{name}-a"));
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
        // From here on every namespace made is deleted by the guard, whatever fails next.
        let mut lab = Lab {
            server_ns,
            agent_ns,
            url: String::new(),
            forwarder: tokio::spawn(async {}),
        };
        ip(&["netns", "add", &lab.agent_ns]);
        ip(&[
            "-n",
            &lab.server_ns,
            "link",
            "add",
            SERVER_VETH,
            "type",
            "veth",
            "peer",
            "name",
            AGENT_VETH,
            "netns",
            &lab.agent_ns,
        ]);
        for (ns, veth, address) in [
            (&lab.server_ns, SERVER_VETH, SERVER_SIDE),
            (&lab.agent_ns, AGENT_VETH, AGENT_SIDE),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{address}/30"), "dev", veth]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", veth, "up"]);
        }
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

    /// Pulls the cable: the agent's end goes down, its packets and the server side's vanish
    /// without a reset, and connections hang until someone gives up on them.
    pub fn cut(&self) {
        ip(&["-n", &self.agent_ns, "link", "set", AGENT_VETH, "down"]);
    }

    /// Plugs the cable back in; connections that nobody gave up on carry on.
    pub fn restore(&self) {
        ip(&["-n", &self.agent_ns, "link", "set", AGENT_VETH, "up"]);
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
    /// no `ping` here); a cut link refuses at once (no route), a live one connects.
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
        for ns in [&self.agent_ns, &self.server_ns] {
            // The agent, and whatever its tasks left behind: only processes started in here.
            if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse() {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                    }
                }
            }
            // Deleting the agent's namespace destroys the veth pair with it.
            if let Err(e) = run("ip", &["netns", "delete", ns]) {
                eprintln!("could not delete network namespace {ns}: {e}");
            }
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
