//! The dispatcher without processes or the wall clock: agents are channels, time is a
//! [`Clock::Manual`] the tests move, and deadlines are enforced by calling the sweep directly.
//! (As mini-redis and pueue test theirs.)

use super::*;
use crate::protocol::agent::{AgentMessage, Hello, Output, TaskFinished, TaskStarted};
use crate::protocol::api::{InvocationCreated, RegisterRequest, RunCommandRequest};
use crate::protocol::{CommandType, ErrorCode, InvocationStatus, OsType, OutputStream, PROTOCOL_VERSION, TaskEnd};
use crate::store::{Role, test_store};
use bytes::Bytes;

/// How long a test waits for a message the dispatcher sends at once (never a deadline).
const PROMPT: Duration = Duration::from_secs(10);

struct Harness {
    dispatcher: Dispatcher,
    clock: Clock,
    admin: Actor,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn harness() -> Harness {
    let (store, dir) = test_store().await;
    let clock = Clock::manual();
    let secret_key = sealing::SecretKey::generate().unwrap();
    let (dispatcher, writer_rx) = Dispatcher::build(store, Settings::default(), clock.clone(), Some(secret_key));
    let shutdown = CancellationToken::new();
    tokio::spawn(writer::run(dispatcher.clone(), writer_rx, shutdown.clone()));
    let admin = Actor {
        user_id: 1,
        username: "ann".into(),
        role: Role::Admin,
        source_ip: "127.0.0.1".into(),
        via: Via::Api,
    };
    Harness {
        dispatcher,
        clock,
        admin,
        _dir: dir,
        shutdown,
    }
}

pub(super) fn hello(held_tasks: Vec<String>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        protocol_versions: Vec::new(),
        agent_version: "test".into(),
        hostname: "host".into(),
        os_type: OsType::Linux,
        os_name: "Debian".into(),
        ip_addresses: vec!["10.0.0.1".into()],
        supported_command_types: vec![CommandType::RunShellScript],
        held_tasks,
        boot_id: None,
    }
}

impl Harness {
    /// Enrols an instance named `name` through an activation, as an agent would.
    async fn enrol(&self, name: &str) -> String {
        let req = ActivationRequest {
            region_id: "local".into(),
            instance_count_limit: 1,
            ttl_hours: None,
            description: None,
        };
        let (activation, code) = self.dispatcher.create_activation(&self.admin, req).await.unwrap();
        let register = RegisterRequest {
            activation_id: activation.id,
            activation_code: code,
            hostname: "host".into(),
            name: Some(name.into()),
            os_type: OsType::Linux,
            os_name: "Debian".into(),
            ip_addresses: vec![],
            agent_version: "test".into(),
            tags: Vec::new(),
        };
        let (instance, _) = self
            .dispatcher
            .register(&Actor::agent("10.0.0.1"), register)
            .await
            .unwrap();
        instance.id
    }

    async fn run(&self, instance_id: &str, content: &str, timeout_secs: u64) -> InvocationCreated {
        let mut req = RunCommandRequest::shell(vec![instance_id.into()], content);
        req.spec.timeout_secs = timeout_secs;
        req.spec.enable_parameter = true;
        self.dispatcher
            .run_command(&self.admin, req)
            .await
            .unwrap()
            .created()
            .unwrap()
    }

    async fn result(&self, invoke_id: &str, instance_id: &str) -> crate::store::ResultRow {
        self.dispatcher.store().result(invoke_id, instance_id).await.unwrap()
    }

    /// An enrolled agent, connected (its `Welcome` taken from the outbox).
    async fn connected(&self, name: &str) -> (String, AgentSession, Outbox) {
        let id = self.enrol(name).await;
        let (session, mut outbox) = self
            .dispatcher
            .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
            .await
            .unwrap();
        assert!(matches!(next(&mut outbox).await, ServerMessage::Welcome(_)));
        (id, session, outbox)
    }

    /// A connected agent running one task: its instance, session, outbox and the invoke id.
    async fn running(&self, content: &str, timeout_secs: u64) -> (String, AgentSession, Outbox, String) {
        let (id, mut session, mut outbox) = self.connected("web-1").await;
        let created = self.run(&id, content, timeout_secs).await;
        assert!(matches!(next(&mut outbox).await, ServerMessage::RunTask(_)));
        self.dispatcher
            .handle(&mut session, started(&created.invoke_id))
            .await
            .unwrap();
        ack_started(self, &created.invoke_id, &id).await;
        (id, session, outbox, created.invoke_id)
    }

    async fn sweep(&self) {
        self.dispatcher.enforce_deadlines().await;
    }
}

/// The next message queued for the agent, skipping heartbeats.
async fn next(outbox: &mut Outbox) -> ServerMessage {
    loop {
        match tokio::time::timeout(PROMPT, outbox.rx.recv()).await {
            Ok(Some(Outbound::Message(ServerMessage::Heartbeat))) => continue,
            Ok(Some(Outbound::Message(message))) => return message,
            Ok(Some(Outbound::Close(reason))) => panic!("the connection was closed: {reason}"),
            Ok(None) => panic!("the outbox closed"),
            Err(_) => panic!("nothing queued for the agent within {PROMPT:?}"),
        }
    }
}

/// Waits for the batching writer to have applied what was queued: the ack of `task` with at
/// least `next_seq` stored.
async fn ack(outbox: &mut Outbox, task: &str) -> crate::protocol::agent::Ack {
    loop {
        if let ServerMessage::Ack(ack) = next(outbox).await {
            if ack.task == task {
                return ack;
            }
        }
    }
}

fn started(task: &str) -> AgentMessage {
    TaskStarted { task: task.into() }.into()
}

fn output(task: &str, seq: u64, data: &'static [u8]) -> AgentMessage {
    Output {
        task: task.into(),
        seq,
        stream: OutputStream::Stdout,
        data: Bytes::from_static(data),
    }
    .into()
}

fn finished(task: &str, chunks: u64, end: TaskEnd, exit_code: Option<i32>) -> AgentMessage {
    TaskFinished {
        task: task.into(),
        chunks,
        exit_code,
        end,
    }
    .into()
}

#[tokio::test]
async fn a_task_reaches_its_connected_agent_and_its_report_is_stored_then_acknowledged() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    let (mut session, mut outbox) = h
        .dispatcher
        .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();
    assert!(matches!(next(&mut outbox).await, ServerMessage::Welcome(_)));

    let created = h.run(&id, "echo hi from {{fleetrun::instance_name}}", 60).await;
    let ServerMessage::RunTask(task) = next(&mut outbox).await else {
        panic!("no RunTask")
    };
    let t = created.invoke_id.as_str();
    for message in [
        started(t),
        output(t, 0, b"hi\n"),
        finished(t, 1, TaskEnd::Exited, Some(0)),
    ] {
        h.dispatcher.handle(&mut session, message).await.unwrap();
    }
    let ack = ack(&mut outbox, t).await;
    let ack = if ack.finished {
        ack
    } else {
        self::ack(&mut outbox, t).await
    };

    assert_eq!(task.content, "echo hi from web-1", "built-ins filled for this instance");
    assert_eq!((ack.next_seq, ack.finished), (1, true));
    let result = h.result(t, &id).await;
    assert_eq!(result.status, ResultStatus::Success);
    assert_eq!(h.dispatcher.store().output(result.id).await.unwrap(), b"hi\n");
}

#[tokio::test]
async fn a_task_waits_for_its_agent_and_is_delivered_when_it_connects_within_the_window() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    let created = h.run(&id, "true", 60).await;
    h.clock.advance(Duration::from_secs(30));
    h.sweep().await;

    let (_session, mut outbox) = h
        .dispatcher
        .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();
    next(&mut outbox).await;
    let delivered = next(&mut outbox).await;

    assert!(
        matches!(&delivered, ServerMessage::RunTask(task) if task.task == created.invoke_id),
        "{delivered:?}"
    );
    assert_eq!(h.result(&created.invoke_id, &id).await.status, ResultStatus::Pending);
}

#[tokio::test]
async fn a_task_never_delivered_is_aborted_when_the_window_closes() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    let created = h.run(&id, "true", 60).await;

    h.clock.advance(Duration::from_secs(59));
    h.sweep().await;
    let early = h.result(&created.invoke_id, &id).await;
    h.clock.advance(Duration::from_secs(2));
    h.sweep().await;
    let late = h.result(&created.invoke_id, &id).await;

    assert_eq!(early.status, ResultStatus::Pending);
    assert_eq!(late.status, ResultStatus::Aborted);
    assert_eq!(
        late.error_code,
        Some(ErrorCode::ClientNotRunning),
        "the agent never connected"
    );
}

#[tokio::test]
async fn a_task_past_its_timeout_and_grace_ends_as_timeout_and_the_agent_is_told_to_stop() {
    let h = harness().await;
    let (id, _session, mut outbox, invoke_id) = h.running("sleep 600", 5).await;

    let grace = h.dispatcher.settings().timeout_grace;
    h.clock.advance(Duration::from_secs(5) + grace - Duration::from_secs(1));
    h.sweep().await;
    let before = h.result(&invoke_id, &id).await.status;
    h.clock.advance(Duration::from_secs(2));
    h.sweep().await;

    assert_eq!(
        before,
        ResultStatus::Running,
        "the agent gets the grace period to report"
    );
    let result = h.result(&invoke_id, &id).await;
    assert_eq!(
        (result.status, result.error_code),
        (ResultStatus::Timeout, Some(ErrorCode::ExecutionTimeout))
    );
    assert!(matches!(next(&mut outbox).await, ServerMessage::StopTask(stop) if stop.task == invoke_id));
}

#[tokio::test]
async fn the_running_task_of_an_agent_lost_for_three_heartbeats_ends_as_client_not_response() {
    let h = harness().await;
    let (id, session, _outbox, invoke_id) = h.running("sleep 600", 600).await;
    h.dispatcher.detach(session).await;

    h.clock
        .advance(h.dispatcher.settings().heartbeat_loss() + Duration::from_secs(1));
    h.sweep().await;

    let result = h.result(&invoke_id, &id).await;
    assert_eq!(
        (result.status, result.error_code),
        (ResultStatus::Error, Some(ErrorCode::ClientNotResponse))
    );
}

/// Waits until the writer stored `TaskStarted` (it sends no ack for a start).
async fn ack_started(h: &Harness, invoke_id: &str, instance_id: &str) {
    tokio::time::timeout(PROMPT, async {
        while h.result(invoke_id, instance_id).await.status != ResultStatus::Running {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the start is stored");
}

#[tokio::test]
async fn a_duplicate_chunk_is_skipped_and_a_gap_closes_the_connection_for_a_resend() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    let (mut session, mut outbox) = h
        .dispatcher
        .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();
    next(&mut outbox).await;
    let created = h.run(&id, "true", 60).await;
    next(&mut outbox).await;
    let t = created.invoke_id.as_str();

    for message in [started(t), output(t, 0, b"a"), output(t, 0, b"a")] {
        h.dispatcher.handle(&mut session, message).await.unwrap();
    }
    let first = ack(&mut outbox, t).await;
    h.dispatcher.handle(&mut session, output(t, 5, b"z")).await.unwrap();
    let closed = tokio::time::timeout(PROMPT, async {
        loop {
            match outbox.rx.recv().await {
                Some(Outbound::Close(reason)) => return reason,
                Some(_) => continue,
                None => panic!("outbox closed without a reason"),
            }
        }
    })
    .await
    .expect("a gap closes the connection");

    assert_eq!(first.next_seq, 1);
    assert_eq!(closed, "output out of sequence");
    let result = h.result(t, &id).await;
    assert_eq!(
        h.dispatcher.store().output(result.id).await.unwrap(),
        b"a",
        "stored once"
    );
}

#[tokio::test]
async fn a_report_about_another_instances_task_is_refused_and_changes_nothing() {
    let h = harness().await;
    let mine = h.enrol("web-1").await;
    let theirs = h.enrol("web-2").await;
    let created = h.run(&theirs, "true", 60).await;
    let (mut session, mut outbox) = h
        .dispatcher
        .attach(&mine, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();
    next(&mut outbox).await;

    h.dispatcher
        .handle(&mut session, started(&created.invoke_id))
        .await
        .unwrap();
    let forget = ack(&mut outbox, &created.invoke_id).await;

    assert!(forget.finished, "the agent is told to forget it");
    assert_eq!(
        h.result(&created.invoke_id, &theirs).await.status,
        ResultStatus::Pending
    );
}

#[tokio::test]
async fn a_stop_cancels_what_has_not_started_and_terminates_what_runs_without_an_error_code() {
    let h = harness().await;
    let running = h.enrol("web-1").await;
    let waiting = h.enrol("web-2").await;
    let (mut session, mut outbox) = h
        .dispatcher
        .attach(&running, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();
    next(&mut outbox).await;
    let req = RunCommandRequest::shell(vec![running.clone(), waiting.clone()], "sleep 600");
    let created = h
        .dispatcher
        .run_command(&h.admin, req)
        .await
        .unwrap()
        .created()
        .unwrap();
    next(&mut outbox).await;
    let t = created.invoke_id.as_str();
    h.dispatcher.handle(&mut session, started(t)).await.unwrap();
    ack_started(&h, t, &running).await;

    let stopped = h.dispatcher.stop(&h.admin, t, None).await.unwrap();
    let stop = next(&mut outbox).await;
    h.dispatcher
        .handle(&mut session, finished(t, 0, TaskEnd::Stopped, Some(143)))
        .await
        .unwrap();
    ack(&mut outbox, t).await;

    assert_eq!(stopped.changed, 2);
    assert!(matches!(stop, ServerMessage::StopTask(s) if s.task == t));
    let cancelled = h.result(t, &waiting).await;
    assert_eq!(
        (cancelled.status, cancelled.error_code),
        (ResultStatus::Cancelled, None)
    );
    let terminated = h.result(t, &running).await;
    assert_eq!(
        (terminated.status, terminated.error_code),
        (ResultStatus::Terminated, None)
    );
    assert_eq!(
        terminated.error_info.as_deref(),
        Some("Stopped by ann."),
        "a user's stop says who stopped it"
    );
}

#[tokio::test]
async fn a_reconnecting_agent_that_no_longer_holds_a_running_task_gets_it_interrupted() {
    let h = harness().await;
    let (id, _session, outbox, invoke_id) = h.running("sleep 600", 600).await;

    let (_again, _outbox) = h
        .dispatcher
        .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();

    let result = h.result(&invoke_id, &id).await;
    assert_eq!(
        (result.status, result.error_code),
        (ResultStatus::Error, Some(ErrorCode::ExecutionInterrupted))
    );
    assert!(outbox.close.is_cancelled(), "the older connection is closed");
}

#[tokio::test]
async fn an_agent_that_stops_reading_is_disconnected_rather_than_queued_without_bound() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    let (_session, outbox) = h
        .dispatcher
        .attach(&id, &hello(vec![]), PROTOCOL_VERSION)
        .await
        .unwrap();

    for n in 0..2 * 1024 {
        h.dispatcher.send_stop(&id, &format!("t-{n}"));
    }

    assert!(outbox.close.is_cancelled());
    assert!(outbox.rx.len() <= 1024, "the queue stayed bounded");
}

/// Every audited action of the domain, each called once: it writes exactly one audit entry,
/// naming the action. The list must name every action the domain's sources audit, so a new
/// mutating call cannot be forgotten here.
#[tokio::test]
async fn every_mutating_domain_call_writes_exactly_one_audit_entry() {
    let h = harness().await;
    let d = &h.dispatcher;
    let admin = &h.admin;
    let store = d.store().clone();
    let count = || async { store.list_audit(&Default::default()).await.unwrap().1 };
    let last = || async {
        let filter = crate::store::AuditFilter {
            limit: 1,
            ..Default::default()
        };
        store.list_audit(&filter).await.unwrap().0.remove(0).action
    };
    let mut walked: Vec<&str> = Vec::new();
    macro_rules! audited {
        ($action:literal, $call:expr) => {{
            let before = count().await;
            let out = $call;
            assert_eq!(count().await, before + 1, "{} writes one entry", $action);
            assert_eq!(last().await, $action);
            walked.push($action);
            out
        }};
    }

    audited!(
        "CreateUser",
        d.ensure_first_admin(Some("a long admin password")).await.unwrap()
    );
    audited!("ModifySettings", d.set_basic_auth(admin, true).await.unwrap());
    let ann = audited!(
        "CreateUser",
        d.create_user(admin, "ann", "ann's long password", "admin")
            .await
            .unwrap()
    );
    let session = audited!(
        "Login",
        d.login("ann", "ann's long password", "10.0.0.9").await.unwrap()
    );
    audited!(
        "LoginFailed",
        d.login("ann", "wrong password!!", "10.0.0.9").await.unwrap_err()
    );
    let ann_actor = Actor {
        user_id: ann.id,
        ..admin.clone()
    };
    audited!("Logout", d.logout(&ann_actor, &session.secret).await.unwrap());
    audited!(
        "ChangePassword",
        d.change_password(&ann_actor, "ann's long password", "a new long password")
            .await
            .unwrap()
    );
    audited!(
        "CreateUser",
        d.create_user(admin, "bob", "bob's long password", "viewer")
            .await
            .unwrap()
    );
    let change = UserChange {
        role: Some("operator".into()),
        ..Default::default()
    };
    audited!("ModifyUser", d.modify_user(admin, "bob", change).await.unwrap());
    audited!("DeleteUser", d.delete_user(admin, "bob").await.unwrap());
    let (token, _) = audited!("CreateToken", d.create_token(&ann_actor, "ci", None).await.unwrap());
    audited!("RevokeToken", d.revoke_token(&ann_actor, &token.id).await.unwrap());
    let (key, _) = audited!(
        "CreateAccessKey",
        d.create_access_key(&ann_actor, Some("ci".into())).await.unwrap()
    );
    audited!(
        "DisableAccessKey",
        d.set_access_key_enabled(&ann_actor, &key.id, false).await.unwrap()
    );
    audited!(
        "EnableAccessKey",
        d.set_access_key_enabled(&ann_actor, &key.id, true).await.unwrap()
    );
    audited!(
        "DeleteAccessKey",
        d.delete_access_key(&ann_actor, &key.id).await.unwrap()
    );
    let req = ActivationRequest {
        region_id: "local".into(),
        instance_count_limit: 2,
        ttl_hours: None,
        description: None,
    };
    let (activation, code) = audited!("CreateActivation", d.create_activation(admin, req).await.unwrap());
    let register = RegisterRequest {
        activation_id: activation.id.clone(),
        activation_code: code,
        hostname: "h".into(),
        name: None,
        os_type: OsType::Linux,
        os_name: "Debian".into(),
        ip_addresses: vec![],
        agent_version: "t".into(),
        tags: vec![crate::protocol::Tag::new("env", "prod")],
    };
    let (instance, _) = audited!(
        "RegisterInstance",
        d.register(&Actor::agent("10.0.0.2"), register).await.unwrap()
    );
    audited!(
        "DisableActivation",
        d.disable_activation(admin, &activation.id).await.unwrap()
    );
    audited!(
        "DeleteActivation",
        d.delete_activation(admin, &activation.id).await.unwrap()
    );
    audited!(
        "RenameInstance",
        d.rename_instance(admin, &instance.id, "web-1").await.unwrap()
    );
    audited!(
        "SetInstanceTags",
        d.set_instance_tags(admin, &instance.id, &[crate::protocol::Tag::new("env", "prod")])
            .await
            .unwrap()
    );
    audited!(
        "AddInstanceTags",
        d.add_instance_tags(
            admin,
            std::slice::from_ref(&instance.id),
            &[crate::protocol::Tag::new("role", "web")]
        )
        .await
        .unwrap()
    );
    let mut keep = RunCommandRequest::shell(vec![instance.id.clone()], "echo hi");
    (keep.keep_command, keep.name) = (true, Some("greet".into()));
    let run = audited!("RunCommand", d.run_command(admin, keep).await.unwrap())
        .created()
        .unwrap();
    let command_id = run.command_id.clone().unwrap();
    let invoke = crate::protocol::api::InvokeCommandRequest {
        instance_ids: vec![instance.id.clone()],
        ..Default::default()
    };
    audited!(
        "InvokeCommand",
        d.invoke_command(admin, &command_id, invoke).await.unwrap()
    );
    audited!("StopInvocation", d.stop(admin, &run.invoke_id, None).await.unwrap());
    let create = crate::protocol::api::CreateCommandRequest {
        region_id: "local".into(),
        name: "other".into(),
        description: None,
        spec: crate::protocol::CommandSpec::shell("uptime"),
        content_encoding: Default::default(),
        no_unknown_fields: crate::protocol::NoUnknownFields,
    };
    let other = audited!("CreateCommand", d.create_command(admin, create).await.unwrap());
    let modify = crate::protocol::api::ModifyCommandRequest {
        description: Some("changed".into()),
        ..Default::default()
    };
    audited!(
        "ModifyCommand",
        d.modify_command(admin, &other.id, modify).await.unwrap()
    );
    audited!("DeleteCommand", d.delete_command(admin, &other.id).await.unwrap());
    let mut upload = d.begin_upload(admin).await.unwrap();
    upload.write(b"key = value\n").await.unwrap();
    let send = super::SendFile {
        instance_ids: vec![instance.id.clone()],
        target_dir: "/etc/app".into(),
        name: "app.conf".into(),
        ..Default::default()
    };
    audited!("SendFile", d.send_file(admin, upload, send).await.unwrap());
    audited!("DeregisterInstance", d.deregister(admin, &instance.id).await.unwrap());

    // A refusal changes nothing and records nothing.
    let before = count().await;
    let viewer = Actor {
        role: Role::Viewer,
        ..admin.clone()
    };
    assert!(
        d.create_user(&viewer, "eve", "eve's long password", "admin")
            .await
            .is_err()
    );
    assert!(
        d.create_user(admin, "Bad Name", "a long password!!", "admin")
            .await
            .is_err()
    );
    assert_eq!(count().await, before);

    let sources = [
        include_str!("accounts.rs"),
        include_str!("access_keys.rs"),
        include_str!("fleet.rs"),
        include_str!("commands.rs"),
        include_str!("run.rs"),
        include_str!("tags.rs"),
        include_str!("files.rs"),
    ];
    let audited_in_sources: std::collections::BTreeSet<&str> = sources
        .iter()
        // `.audit(actor, "Action", …)`, or an action handed to `launch` as `audit = ("Action", …)`.
        .flat_map(|source| source.split(".audit(").skip(1).chain(source.split("audit = (").skip(1)))
        // The action is the first literal of the call (a call passing it on has none).
        .filter_map(|call| call.split(')').next()?.split('"').nth(1))
        .collect();
    let walked: std::collections::BTreeSet<&str> = walked.into_iter().collect();
    assert_eq!(walked, audited_in_sources, "every audited action is walked here");
}

#[test]
fn the_purge_sizes_its_batches_to_a_short_hold_of_the_write_lock() {
    let mut pace = PurgePace::new();
    // Slow batches (cold pages): the batch shrinks, and the pause matches the hold.
    let pause = pace.after(pace.batch, Duration::from_millis(150));
    assert_eq!(pause, Duration::from_millis(150));
    assert!(pace.batch < PurgePace::FIRST, "{pace:?}");
    for _ in 0..20 {
        pace.after(pace.batch, Duration::from_millis(150));
    }
    assert_eq!(pace.batch, PurgePace::MIN);
    // Fast batches: it grows, up to its bound, pausing at least 5 ms.
    for _ in 0..40 {
        assert_eq!(
            pace.after(pace.batch, Duration::from_micros(500)),
            Duration::from_millis(5)
        );
    }
    assert_eq!(pace.batch, PurgePace::MAX);
    // At the target it settles.
    let mut pace = PurgePace { batch: 1_000 };
    pace.after(1_000, PURGE_TXN);
    assert_eq!(pace.batch, 1_000);
}

#[tokio::test]
async fn a_task_sent_but_never_acknowledged_is_aborted_after_a_margin_and_a_late_start_tells_the_truth() {
    let h = harness().await;
    let (id, mut session, mut outbox) = h.connected("web-1").await;
    let created = h.run(&id, "true", 60).await;
    let ServerMessage::RunTask(task) = next(&mut outbox).await else {
        panic!("no RunTask")
    };
    assert_eq!(
        task.deliver_by,
        Some(h.dispatcher.now() + 60_000),
        "the task carries the end of its delivery window"
    );
    let t = created.invoke_id.as_str();

    // The agent froze with the task in its socket: never acknowledged.
    h.clock.advance(Duration::from_secs(61));
    h.sweep().await;
    assert_eq!(
        h.result(t, &id).await.status,
        ResultStatus::Pending,
        "a sent task gets a margin past its window: the agent may have accepted it just in time"
    );
    h.clock.advance(Duration::from_secs(10));
    h.sweep().await;
    let aborted = h.result(t, &id).await;
    assert_eq!(
        (aborted.status, aborted.error_code),
        (ResultStatus::Aborted, Some(ErrorCode::ClientNotResponse)),
        "sent and never acknowledged is not 'never sent'"
    );

    // It had accepted it just in time after all: the late start is the truth.
    h.dispatcher.handle(&mut session, started(t)).await.unwrap();
    ack_started(&h, t, &id).await;
    let revived = h.result(t, &id).await;
    assert_eq!((revived.status, revived.error_code), (ResultStatus::Running, None));
    assert_eq!(revived.error_info, None);
}

#[tokio::test]
async fn a_task_refused_by_its_agent_after_the_deadline_is_aborted_and_never_revived() {
    let h = harness().await;
    let (id, mut session, mut outbox) = h.connected("web-1").await;
    let created = h.run(&id, "true", 60).await;
    next(&mut outbox).await;
    let t = created.invoke_id.as_str();
    let refused = TaskEnd::Error {
        error_code: ErrorCode::DeliveryTimeout,
        error_info: "received 3 s after its delivery deadline".into(),
    };
    h.dispatcher
        .handle(&mut session, finished(t, 0, refused, None))
        .await
        .unwrap();
    ack(&mut outbox, t).await;
    let result = h.result(t, &id).await;
    assert_eq!(
        (result.status, result.error_code),
        (ResultStatus::Aborted, Some(ErrorCode::DeliveryTimeout))
    );
    // A start reported later (it cannot happen, but a server does not trust) changes nothing.
    h.dispatcher.handle(&mut session, started(t)).await.unwrap();
    assert!(matches!(next(&mut outbox).await, ServerMessage::StopTask(s) if s.task == t));
    assert_eq!(h.result(t, &id).await.status, ResultStatus::Aborted);
}

/// A stop and the agent's end of the same task, racing: watchers get the result's statuses in
/// the order they were committed, never `Stopping` after the end. (A race test: it catches a
/// reordering only when the scheduler interleaves the two the wrong way, which the lock makes
/// impossible; without the lock it passes most runs, so it guards, it does not prove.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_of_one_result_are_published_in_commit_order() {
    let h = harness().await;
    let (id, mut session, mut outbox) = h.connected("web-1").await;
    for _ in 0..20 {
        let created = h.run(&id, "sleep 600", 60).await;
        next(&mut outbox).await;
        let t = created.invoke_id.clone();
        h.dispatcher.handle(&mut session, started(&t)).await.unwrap();
        ack_started(&h, &t, &id).await;
        let mut watch = h.dispatcher.watch(&t);
        let stop = {
            let (dispatcher, admin, t) = (h.dispatcher.clone(), h.admin.clone(), t.clone());
            tokio::spawn(async move { dispatcher.stop(&admin, &t, None).await })
        };
        h.dispatcher
            .handle(&mut session, finished(&t, 0, TaskEnd::Exited, Some(0)))
            .await
            .unwrap();
        let _ = stop.await.unwrap();
        let mut statuses = Vec::new();
        while statuses.last().is_none_or(|s: &ResultStatus| !s.is_terminal()) {
            match tokio::time::timeout(PROMPT, watch.recv()).await.unwrap().unwrap() {
                watch::Live::Event(event) => {
                    if let StreamEvent::Status { invocation_status, .. } = &*event {
                        statuses.push(*invocation_status);
                    }
                }
                watch::Live::Lagged => panic!("lagged"),
            }
        }
        // Nothing after the end.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Some(live) = watch.try_recv() {
            if let watch::Live::Event(event) = live {
                assert!(
                    !matches!(&*event, StreamEvent::Status { .. }),
                    "a status after the end: {statuses:?} then {event:?}"
                );
            }
        }
        while let Ok(Outbound::Message(_)) = outbox.rx.try_recv() {}
    }
}

/// Three agents connected and an invocation on them with rate control; `(instance ids with
/// their sessions and outboxes, invoke id)`.
async fn rated_run(
    h: &Harness,
    max_concurrency: &str,
    max_errors: Option<&str>,
) -> (Vec<(String, AgentSession, Outbox)>, String) {
    let mut agents = Vec::new();
    for name in ["web-1", "web-2", "web-3"] {
        agents.push(h.connected(name).await);
    }
    let ids: Vec<String> = agents.iter().map(|(id, _, _)| id.clone()).collect();
    let mut req = RunCommandRequest::shell(ids, "exit 1");
    req.max_concurrency = Some(max_concurrency.into());
    req.max_errors = max_errors.map(Into::into);
    let created = h
        .dispatcher
        .run_command(&h.admin, req)
        .await
        .unwrap()
        .created()
        .unwrap();
    (agents, created.invoke_id)
}

/// Whether anything but heartbeats and acks is queued for the agent now.
fn has_task(outbox: &mut Outbox) -> bool {
    while let Ok(message) = outbox.rx.try_recv() {
        if matches!(message, Outbound::Message(ServerMessage::RunTask(_))) {
            return true;
        }
    }
    false
}

/// Runs an agent's task to its end with `exit_code`, through the writer.
async fn run_to_end(h: &Harness, agent: &mut (String, AgentSession, Outbox), invoke_id: &str, exit_code: i32) {
    let (id, session, outbox) = agent;
    assert!(
        matches!(next(outbox).await, ServerMessage::RunTask(task) if task.task == invoke_id),
        "{id} got its task"
    );
    for message in [
        started(invoke_id),
        finished(invoke_id, 0, TaskEnd::Exited, Some(exit_code)),
    ] {
        h.dispatcher.handle(session, message).await.unwrap();
    }
    ack(outbox, invoke_id).await;
}

#[tokio::test]
async fn with_max_concurrency_one_each_instance_gets_its_task_when_the_one_before_ends() {
    let h = harness().await;
    let (mut agents, invoke_id) = rated_run(&h, "1", None).await;

    assert!(!has_task(&mut agents[1].2) && !has_task(&mut agents[2].2), "held");
    assert_eq!(h.dispatcher.store().invocation(&invoke_id).await.unwrap().rate.held, 2);
    run_to_end(&h, &mut agents[0], &invoke_id, 0).await;
    assert!(!has_task(&mut agents[2].2), "one at a time");
    run_to_end(&h, &mut agents[1], &invoke_id, 0).await;
    run_to_end(&h, &mut agents[2], &invoke_id, 0).await;

    let invocation = h.dispatcher.store().invocation(&invoke_id).await.unwrap();
    assert_eq!(invocation.status(), InvocationStatus::Success);
    assert_eq!(invocation.rate.held, 0);
    let filter = crate::store::AuditFilter {
        action: Some("RunCommand".into()),
        limit: 10,
        ..Default::default()
    };
    let (audit, _) = h.dispatcher.store().list_audit(&filter).await.unwrap();
    assert_eq!(
        audit[0].detail, "on 3 instances, max_concurrency 1",
        "the audit log records the limits"
    );
}

#[tokio::test]
async fn past_max_errors_the_held_instances_end_cancelled_with_exceed_max_errors_and_never_get_a_task() {
    let h = harness().await;
    let (mut agents, invoke_id) = rated_run(&h, "1", Some("0")).await;

    run_to_end(&h, &mut agents[0], &invoke_id, 1).await;
    // The writer acknowledges before it takes rate control's step.
    tokio::time::timeout(PROMPT, async {
        while h.dispatcher.store().invocation(&invoke_id).await.unwrap().rate.held > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the held results are settled");

    for (id, _, outbox) in &mut agents[1..] {
        let result = h.result(&invoke_id, id).await;
        assert_eq!(
            (result.status, result.error_code),
            (ResultStatus::Cancelled, Some(ErrorCode::ExceedMaxErrors))
        );
        assert_eq!(
            result.error_info.as_deref(),
            Some("Not started: 1 instance failed and max_errors is 0.")
        );
        assert!(!has_task(outbox), "{id} never got its task");
    }
    let invocation = h.dispatcher.store().invocation(&invoke_id).await.unwrap();
    assert_eq!(
        invocation.status(),
        InvocationStatus::Failed,
        "failed and not started: Failed"
    );
}

#[tokio::test]
async fn a_bad_rate_limit_is_refused_naming_its_field_and_nothing_is_stored() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    for (concurrency, errors, field) in [
        ("0", None, Field::MaxConcurrency),
        ("0%", None, Field::MaxConcurrency),
        ("ten", None, Field::MaxConcurrency),
        ("1", Some("150%"), Field::MaxErrors),
        ("1", Some("-1"), Field::MaxErrors),
        ("20000", None, Field::MaxConcurrency),
    ] {
        let mut req = RunCommandRequest::shell(vec![id.clone()], "true");
        req.max_concurrency = Some(concurrency.into());
        req.max_errors = errors.map(Into::into);

        let err = h.dispatcher.run_command(&h.admin, req).await.unwrap_err();

        assert!(
            matches!(&err, Error::Invalid { field: f, .. } if *f == field),
            "{concurrency} {errors:?}: {err:?}"
        );
    }
    let listed = h
        .dispatcher
        .store()
        .list_invocations(&crate::store::InvocationFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.total, 0);
}

#[tokio::test]
async fn rate_limits_with_an_execution_plan_are_refused_and_nothing_is_stored() {
    let h = harness().await;
    let id = h.enrol("web-1").await;
    for (concurrency, errors, field) in [
        (Some("1"), None, Field::MaxConcurrency),
        (None, Some("0"), Field::MaxErrors),
    ] {
        let mut req = RunCommandRequest::shell(vec![id.clone()], "true");
        req.frequency = Some("rate(1h)".to_string());
        req.max_concurrency = concurrency.map(Into::into);
        req.max_errors = errors.map(Into::into);

        let err = h.dispatcher.run_command(&h.admin, req).await.unwrap_err();

        assert!(
            matches!(&err, Error::Invalid { field: f, .. } if *f == field),
            "{concurrency:?} {errors:?}: {err:?}"
        );
    }
    let listed = h
        .dispatcher
        .store()
        .list_invocations(&crate::store::InvocationFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.total, 0);
}
