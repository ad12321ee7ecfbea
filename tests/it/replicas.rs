//! Several servers on one PostgreSQL (issue 12): agents spread over three replicas, a command
//! sent through one, watched live through another and stopped through the third.

use crate::helpers::{Backend, Console, TestApp, eventually, form, live_processes, unique_seconds};
use fleetrun::client::{ApiClient, ApiFailure, Credentials};
use fleetrun::protocol::api::{RunCommandRequest, StreamEvent};
use fleetrun::protocol::{InvocationStatus, ResultStatus};
use reqwest::Method;
use std::collections::BTreeMap;
use std::time::Duration;

/// Agents per replica.
const PER_REPLICA: usize = 10;

#[tokio::test]
async fn a_command_sent_through_a_watched_through_b_and_stopped_through_c_ends_terminated_everywhere() {
    let a = TestApp::spawn_on(Backend::Postgres, &[]).await;
    let b = a.replica(&[]).await;
    let c = a.replica(&[]).await;
    let mut agents = Vec::new();
    for replica in [&a, &b, &c] {
        for _ in 0..PER_REPLICA {
            agents.push(replica.agent("cn-hangzhou").await);
        }
    }
    let mut ids = Vec::new();
    for agent in &agents {
        ids.push(agent.instance_id().await);
    }
    // Every replica sees every agent online, whichever holds it.
    for replica in [&a, &b, &c] {
        let list = replica.client.instances("region_id=cn-hangzhou").await.unwrap();
        assert_eq!(list.total as usize, ids.len());
        assert!(list.instances.iter().all(|i| i.agent.online));
    }

    let (first, second) = (unique_seconds(1000), unique_seconds(1000));
    let script = format!("sh -c 'sleep {first} & sleep {second}'");
    let created = a
        .client
        .run(&RunCommandRequest::shell(ids.clone(), script))
        .await
        .unwrap();

    // B follows the invocation live from the start until it is done.
    let watcher = {
        let client = b.client.clone();
        let invoke_id = created.invoke_id.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, Vec<ResultStatus>> = BTreeMap::new();
            let mut done = None;
            client
                .stream(&invoke_id, None, |event| match event {
                    StreamEvent::Status {
                        instance_id,
                        invocation_status,
                        ..
                    } => {
                        seen.entry(instance_id.clone()).or_default().push(*invocation_status);
                    }
                    StreamEvent::Done { invocation_status } => done = Some(*invocation_status),
                    _ => {}
                })
                .await
                .unwrap();
            (seen, done)
        })
    };

    let all_running = || async {
        let inv = a.client.invocation(&created.invoke_id).await.ok()?;
        inv.results?
            .iter()
            .all(|r| r.invocation_status == ResultStatus::Running)
            .then_some(())
    };
    eventually(Duration::from_secs(30), "every agent to run the command", all_running).await;
    let started = || async { (live_processes(&second).len() >= ids.len()).then_some(()) };
    eventually(Duration::from_secs(10), "every process tree to start", started).await;

    c.client.stop(&created.invoke_id, None).await.unwrap();
    let stopped = c.wait_done(&created.invoke_id, Duration::from_secs(30)).await;

    assert_eq!(stopped.invocation_status, InvocationStatus::Stopped);
    let results = stopped.results.unwrap();
    assert_eq!(results.len(), ids.len());
    assert!(
        results.iter().all(|r| r.invocation_status == ResultStatus::Terminated),
        "{results:?}"
    );
    let gone = || async { (live_processes(&first).is_empty() && live_processes(&second).is_empty()).then_some(()) };
    eventually(Duration::from_secs(10), "every process tree to be gone", gone).await;

    let (seen, done) = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("B's stream ends once the invocation is done")
        .unwrap();
    assert_eq!(done, Some(InvocationStatus::Stopped));
    assert_eq!(seen.len(), ids.len(), "B saw every instance: {seen:?}");
    for (instance, statuses) in &seen {
        assert_eq!(
            statuses.last(),
            Some(&ResultStatus::Terminated),
            "{instance}: {statuses:?}"
        );
        let mut distinct = statuses.clone();
        distinct.dedup();
        assert_eq!(&distinct, statuses, "{instance}: each status once, in order");
        assert!(statuses.len() <= 4, "{instance}: {statuses:?}");
    }
}

#[tokio::test]
async fn an_agent_of_a_replica_that_stops_is_offline_at_once_and_a_command_reaches_it_after_it_moves() {
    let a = TestApp::spawn_on(Backend::Postgres, &[]).await;
    let b = a.replica(&[]).await;
    let mut agent = b.agent("local").await;
    let id = agent.instance_id().await;

    drop(b);
    let offline = || async {
        let list = a.client.instances("region_id=local").await.ok()?;
        (!list.instances[0].agent.online).then_some(())
    };
    eventually(Duration::from_secs(15), "A to see the agent offline", offline).await;

    // Sent while the agent is away: delivered when it connects to A.
    let created = a
        .client
        .run(&RunCommandRequest::shell(vec![id.clone()], "echo moved"))
        .await
        .unwrap();
    agent.kill9().await;
    agent.restart(&a.url);
    let done = a.wait_done(&created.invoke_id, Duration::from_secs(30)).await;
    let result = &done.results.unwrap()[0];
    assert_eq!(result.invocation_status, ResultStatus::Success, "{result:?}");
}

#[tokio::test]
async fn failed_logins_spread_over_three_replicas_count_together() {
    let a = TestApp::spawn_on(Backend::Postgres, &[]).await;
    let (b, c) = (a.replica(&[]).await, a.replica(&[]).await);
    let wrong = |app: &TestApp| {
        ApiClient::new(
            &app.url,
            Credentials::Basic {
                username: "admin".into(),
                password: "wrong".into(),
            },
        )
    };
    let clients = [wrong(&a), wrong(&b), wrong(&c)];

    // The address limit is 50 failures in 15 minutes: 17, 17 and 16 of them on three replicas.
    for n in 0..50 {
        let failure = clients[n % 3].instances("").await.unwrap_err();
        assert_eq!(failure.downcast_ref::<ApiFailure>().unwrap().status, 401, "failure {n}");
    }
    for client in &clients {
        let refused = client.raw(Method::GET, "/instances", None).await.unwrap();
        assert_eq!(refused.status(), 429, "every replica counts the 50");
    }
}

#[tokio::test]
async fn a_console_session_made_on_one_replica_works_on_the_others() {
    let a = TestApp::spawn_on(Backend::Postgres, &[]).await;
    let (b, c) = (a.replica(&[]).await, a.replica(&[]).await);
    let on_a = Console::login(&a).await;
    let elsewhere = |app: &TestApp| Console {
        http: on_a.http.clone(),
        url: app.url.clone(),
        set_cookie: on_a.set_cookie.clone(),
        cookie: on_a.cookie.clone(),
        csrf: on_a.csrf.clone(),
    };
    let (on_b, on_c) = (elsewhere(&b), elsewhere(&c));

    let page = on_b.get("/console/instances").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text.contains("admin"), "B knows whose session it is");
    // A state change on C with A's CSRF token.
    let picked = on_c
        .post_form("/console/region", form(&[("region_id", "cn-hangzhou")]))
        .await
        .unwrap();
    assert_eq!(picked.status, 200);

    // Logging out on C ends the session on A and B too.
    let out = on_c.post_form("/logout", Vec::new()).await.unwrap();
    assert!(out.status == 303 || out.status == 200, "{}", out.status);
    for console in [&on_a, &on_b] {
        let page = console.get("/console/instances").await.unwrap();
        assert_ne!(page.status, 200, "the session ended everywhere");
    }
}
