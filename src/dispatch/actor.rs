//! Who asks: every mutating domain call takes an [`Actor`], checks its role and writes the one
//! audit entry for the action, so no surface can forget either.

use super::Dispatcher;
use super::error::Error;
use crate::store::{NewAudit, Role};

/// The surface an action came through, recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The JSON API (and the CLI, which calls it).
    Api,
    /// The web console.
    Console,
    /// The Alibaba ECS API, signed with an AccessKey.
    Ecs,
    /// An agent (enrolment).
    Agent,
    /// The server itself (the demo's activations, housekeeping).
    Server,
}

impl Via {
    /// The word stored in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Console => "console",
            Via::Ecs => "ecs",
            Via::Agent => "agent",
            Via::Server => "server",
        }
    }
}

/// Who performs an action, from where, through which surface.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The account's id; 0 for agents and the server.
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    /// Peer address, for the audit log.
    pub source_ip: String,
    pub via: Via,
}

impl Actor {
    /// An agent enrolling from `source_ip`: it may only enrol.
    pub fn agent(source_ip: &str) -> Actor {
        Actor {
            user_id: 0,
            username: "agent".into(),
            role: Role::Viewer,
            source_ip: source_ip.into(),
            via: Via::Agent,
        }
    }

    /// The server acting on its own (`what` names the job, e.g. `demo`).
    pub fn server(what: &str) -> Actor {
        Actor {
            user_id: 0,
            username: what.into(),
            role: Role::Admin,
            source_ip: "local".into(),
            via: Via::Server,
        }
    }

    /// Refuses unless the actor's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), Error> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Error::Forbidden {
                needed: role,
                has: self.role,
                username: self.username.clone(),
            })
        }
    }
}

impl Dispatcher {
    /// Records one audit entry for an action `actor` took. A failure to record is logged, not
    /// returned: the action is done.
    pub(super) async fn audit(&self, actor: &Actor, action: &str, target: &str, detail: &str) {
        let entry = NewAudit {
            username: &actor.username,
            source_ip: &actor.source_ip,
            via: actor.via.as_str(),
            action,
            target,
            detail,
        };
        if let Err(e) = self.inner.store.audit(entry).await {
            tracing::warn!(error = %e, action, "could not record an audit entry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        let actor = |role| Actor {
            role,
            ..Actor::server("t")
        };
        assert!(actor(Role::Admin).require(Role::Operator).is_ok());
        assert!(actor(Role::Operator).require(Role::Operator).is_ok());
        assert!(matches!(
            actor(Role::Viewer).require(Role::Operator),
            Err(Error::Forbidden { .. })
        ));
    }
}
