//! Bearer-token auth and per-client rate limits, as a tonic interceptor in front
//! of each service. Users and agents have separate token sets: a user token does
//! not open the agent stream and an agent token cannot submit jobs. An agent
//! token from `node_tokens` names the nodes it may be; the request carries that
//! ([`AgentIdentity`]) to the session, which refuses any other name.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use tonic::{Request, Status};

/// Which node names the caller's agent credential may register as (`None`:
/// any, a fleet-wide token or insecure local mode).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub nodes: Option<Arc<super::config::NodeToken>>,
}

impl AgentIdentity {
    /// `Err` names the node asked for and the nodes the credential allows.
    pub fn check(&self, node: &str) -> Result<(), Status> {
        match &self.nodes {
            Some(t) if !t.allows(node) => {
                metrics::counter!("greenfill_agent_registrations_refused_total", "reason" => "node_not_allowed")
                    .increment(1);
                Err(Status::permission_denied(format!(
                    "this agent token may register as {:?} only, not as node {node}",
                    t.nodes
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Who a user call comes from: a named user (`users`), or an admin (a
/// `user_tokens` entry, or `insecure_local`: one local admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
    /// May read PlanService (as admins may) without admin rights over jobs.
    pub viewer: bool,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Caller {
    fn admin(name: &str) -> Caller {
        Caller { name: name.to_owned(), admin: true, viewer: false, uids: vec![], gids: vec![] }
    }

    /// PlanService (the plan holds every job's node and start; the audit log
    /// every registration and cancel) answers admins and viewers only.
    pub fn may_read_plans(&self) -> Result<(), Status> {
        if self.admin || self.viewer {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "PlanService answers admins and viewers; user {} is neither (`admin` or `viewer` in its [[users]] entry)",
            self.name
        )))
    }

    /// Admins see every job; a user only its own.
    pub fn may_see(&self, job: &greenfill_proto::v1::Job) -> bool {
        self.admin || job.owner == self.name
    }

    /// A job may run as `uid` / `gid` only if the caller's mapping has them
    /// (admins: any). `None` is the agent's default (`nobody`).
    pub fn may_run_as(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), Status> {
        if self.admin {
            return Ok(());
        }
        for (field, id, allowed) in [("spec.run_as_uid", uid, &self.uids), ("spec.run_as_gid", gid, &self.gids)] {
            if let Some(id) = id.filter(|id| !allowed.contains(id)) {
                return Err(Status::permission_denied(format!(
                    "{field} = {id}: user {} may run jobs as {allowed:?} only",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// The caller of a user request (set by [`Guard::check`]); a request that
    /// somehow lacks one gets no rights.
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::permission_denied("no caller identity on this request"))
    }
}

#[derive(Debug, Clone)]
pub struct Guard {
    /// `None` = insecure local mode: no token needed.
    tokens: Option<Arc<HashSet<String>>>,
    /// Tokens bound to node names (agents only).
    bound: Arc<HashMap<String, Arc<super::config::NodeToken>>>,
    /// Named users' tokens (users only).
    users: Arc<HashMap<String, Caller>>,
    /// Kubernetes service-account tokens (agents only).
    kube: Option<Arc<super::kube::Verifier>>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    who: &'static str,
    /// Limit each connection apart (agents: one stream each, all sharing a
    /// fleet token and, behind NAT or on one test host, an address).
    per_connection: bool,
}

impl Guard {
    pub fn new(tokens: Option<&[String]>, per_second: u32, burst: u32, who: &'static str) -> Guard {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Guard {
            tokens: tokens.map(|t| Arc::new(t.iter().cloned().collect())),
            bound: Arc::new(HashMap::new()),
            users: Arc::new(HashMap::new()),
            kube: None,
            limiter: Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))),
            who,
            per_connection: false,
        }
    }

    /// Key the rate limit by connection (address and port) as well as token:
    /// 10,000 agents sharing a fleet token reconnecting after a failover must
    /// not share one bucket.
    pub fn per_connection(mut self) -> Guard {
        self.per_connection = true;
        self
    }

    /// Also accept these node-bound tokens (agents).
    pub fn with_node_tokens(mut self, tokens: &[super::config::NodeToken]) -> Guard {
        self.bound = Arc::new(tokens.iter().map(|t| (t.token.clone(), Arc::new(t.clone()))).collect());
        self
    }

    /// Also accept Kubernetes service-account tokens, each bound to its node.
    pub fn with_kubernetes(mut self, kube: Option<Arc<super::kube::Verifier>>) -> Guard {
        self.kube = kube;
        self
    }

    /// Also accept these named users' tokens.
    pub fn with_users(mut self, users: &[super::config::UserDecl]) -> Guard {
        self.users = Arc::new(
            users
                .iter()
                .map(|u| {
                    let c = Caller {
                        name: u.name.clone(),
                        admin: u.admin,
                        viewer: u.viewer,
                        uids: u.uids.clone(),
                        gids: u.gids.clone(),
                    };
                    (u.token.clone(), c)
                })
                .collect(),
        );
        self
    }

    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let mut bound = token.as_ref().and_then(|t| self.bound.get(t)).cloned();
        let user = token.as_ref().and_then(|t| self.users.get(t)).cloned();
        let known =
            |t: &String| self.tokens.as_ref().is_some_and(|s| s.contains(t)) || bound.is_some() || user.is_some();
        if let (Some(kube), Some(t)) = (&self.kube, &token)
            && !known(t)
            && t.matches('.').count() == 2
        {
            let node = kube.node_of(t)?;
            let nodes = vec![node];
            bound = Some(Arc::new(super::config::NodeToken { token: String::new(), nodes }));
        }
        if let Some(tokens) = &self.tokens {
            match &token {
                Some(t) if tokens.contains(t) || bound.is_some() || user.is_some() => {}
                Some(_) => {
                    return Err(Status::unauthenticated(format!("the bearer token is not a known {} token", self.who)));
                }
                None => {
                    return Err(Status::unauthenticated(format!(
                        "no `authorization: Bearer <token>` header; this call needs a {} token",
                        self.who
                    )));
                }
            }
        }
        let peer = req.remote_addr();
        let key = match (token, self.per_connection) {
            (Some(t), false) => t,
            (Some(t), true) => format!("{t}@{}", peer.map(|a| a.to_string()).unwrap_or_default()),
            (None, false) => peer.map(|a| a.ip().to_string()).unwrap_or_default(),
            (None, true) => peer.map(|a| a.to_string()).unwrap_or_default(),
        };
        if self.per_connection && self.limiter.len() > 50_000 {
            // Keys of closed connections: forget the ones at full burst again.
            self.limiter.retain_recent();
        }
        if self.limiter.check_key(&key).is_err() {
            metrics::counter!("greenfill_rate_limited_total", "who" => self.who).increment(1);
            return Err(Status::resource_exhausted("rate limit reached for this client; retry with backoff"));
        }
        req.extensions_mut().insert(AgentIdentity { nodes: bound });
        // A named user; else a shared token's holder, or the local user of
        // `insecure_local`: admins, as before users existed.
        let caller = user.unwrap_or_else(|| Caller::admin(if self.tokens.is_some() { "admin" } else { "local" }));
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}
