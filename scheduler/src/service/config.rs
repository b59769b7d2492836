//! The scheduler's config file (TOML). Every key has a default, so an empty file
//! (or none, with `--insecure-local`) is a working quick start.

use greenfill_core::time::parse_duration;
use greenfill_planner::{GUARD_SLACK, PlanOptions, ProblemError, intensity_error};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; empty = off.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// No tokens, no TLS; only allowed on a loopback address.
    pub insecure_local: bool,
    /// Bearer tokens of users (JobService, PlanService).
    pub user_tokens: Vec<String>,
    /// Bearer tokens of agents (AgentService), separate from users'. Valid for
    /// any node name: prefer `node_tokens`.
    pub agent_tokens: Vec<String>,
    /// Agent tokens bound to the node names they may register as.
    pub node_tokens: Vec<NodeToken>,
    /// Agents on Kubernetes authenticate with projected service-account
    /// tokens bound to their pod's node (see [`KubernetesAuth`]).
    pub kubernetes: Option<KubernetesAuth>,
    /// Named users: each sees and touches only its own jobs (admins: all) and
    /// may run jobs only as its uids / gids. `user_tokens` are admins.
    pub users: Vec<UserDecl>,
    pub tls: Option<Tls>,
    /// Pools jobs may name before any node of them has registered, with their node size.
    pub pools: Vec<PoolDecl>,
    pub planning: Planning,
    pub limits: Limits,
    pub power: Power,
    pub carbon: CarbonDecl,
    /// What the plan weighs per kWh: carbon (the default), the energy bill, or both.
    pub objective: ObjectiveDecl,
    /// The fleet's day-ahead electricity price (for `objective.mode` cost or both).
    pub price: Option<PriceDecl>,
    /// Where state lives: unset = SQLite in `data_dir` (one replica); a
    /// `postgres://user:password@host:port/db` URL = PostgreSQL, shared by
    /// several replicas of which one leads (`[replication]`). Usually given by
    /// `GREENFILL_STORE` from a secret rather than written in the file.
    pub store: Option<String>,
    pub replication: Replication,
}

/// `[replication]`: the leader lease of replicas on one PostgreSQL store.
/// Defaults are kube-scheduler's (15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// A leader that has not renewed for this long is replaced.
    #[serde(with = "dur")]
    pub lease: Duration,
    /// A leader that could not renew for this long steps down (before its lease ends).
    #[serde(with = "dur")]
    pub renew_deadline: Duration,
    /// How often the leader renews and followers try to take an ended lease.
    #[serde(with = "dur")]
    pub retry: Duration,
    /// The address clients and agents should use for this replica while it
    /// leads (followers name it in their UNAVAILABLE answers); default `listen`.
    pub advertise: Option<String>,
    /// Connecting to the database at start: longer is an error (exit 1).
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
}

impl Default for Replication {
    fn default() -> Replication {
        Replication {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            advertise: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// `[carbon]`: live grid signals per zone (see `service::carbon`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarbonDecl {
    /// How often the zones are looked at; each source is asked only once its
    /// own refresh interval has passed (NESO 30 min, WattTime 5 min, …).
    #[serde(with = "dur")]
    pub check_every: Duration,
    /// A failed source's last good forecast is planned with this long, before
    /// the next source is taken.
    #[serde(with = "dur")]
    pub stale_after: Duration,
    /// Per request to a provider.
    #[serde(with = "dur")]
    pub timeout: Duration,
    /// The zone of pools that name none (default: the one zone configured,
    /// else the built-in `default`: `planning.carbon_file`, then
    /// `planning.carbon_constant`).
    pub default_zone: Option<String>,
    /// Zones by name, each with its sources, first preferred.
    pub zones: std::collections::BTreeMap<String, greenfill_carbon::ZoneConfig>,
}

/// `[objective]`: `mode = "carbon"` (grams of CO2, the default), `"cost"`
/// (the energy bill at `[price]`), or `"both"` (the bill plus carbon at
/// `carbon_price` currency per tonne).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveDecl {
    pub mode: String,
    pub carbon_price: f64,
}

impl Default for ObjectiveDecl {
    fn default() -> ObjectiveDecl {
        ObjectiveDecl { mode: "carbon".into(), carbon_price: 0.0 }
    }
}

impl ObjectiveDecl {
    /// The planner's objective (checked by [`Config::validate`]).
    pub fn objective(&self) -> greenfill_planner::Objective {
        match self.mode.as_str() {
            "cost" => greenfill_planner::Objective::Cost,
            "both" => greenfill_planner::Objective::Both { carbon_price: self.carbon_price },
            _ => greenfill_planner::Objective::Carbon,
        }
    }
}

/// `[price]`: the day-ahead price of the fleet's bidding zone, from the
/// first of `[[price.sources]]` that answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceDecl {
    pub sources: Vec<PriceSourceDecl>,
    /// How often the source is asked (day-ahead prices change once a day).
    #[serde(default = "hourly", with = "dur")]
    pub refresh: Duration,
    /// Per request.
    #[serde(default = "ten_seconds", with = "dur")]
    pub timeout: Duration,
    /// The currency of a file's or a constant's prices (providers name theirs).
    #[serde(default = "euro")]
    pub currency: String,
    /// Bidding zones by the names of `[carbon.zones]`: the pools in such a
    /// zone pay its price (the others `sources`'). One currency for all.
    #[serde(default)]
    pub zones: std::collections::BTreeMap<String, PriceZoneDecl>,
}

/// `[price.zones.NAME]`: that zone's own sources, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceZoneDecl {
    pub sources: Vec<PriceSourceDecl>,
}

fn hourly() -> Duration {
    Duration::from_secs(3600)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn euro() -> String {
    "EUR".into()
}

/// One of `[[price.sources]]`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PriceSourceDecl {
    /// Fraunhofer ISE's Energy-Charts, keyless: `zone` a bidding zone (DE-LU).
    EnergyCharts { zone: String, base_url: Option<String> },
    /// ENTSO-E Transparency: `zone` a bidding zone or EIC code, the token
    /// from a file or an environment variable.
    Entsoe { zone: String, token_file: Option<PathBuf>, token_env: Option<String>, base_url: Option<String> },
    /// A CSV of `time,price`, replayed by position in its span.
    File { path: PathBuf },
    /// One price per MWh for every hour.
    Constant { value: f64 },
}

impl Default for CarbonDecl {
    fn default() -> CarbonDecl {
        CarbonDecl {
            check_every: Duration::from_secs(60),
            stale_after: Duration::from_secs(6 * 3600),
            timeout: Duration::from_secs(10),
            default_zone: None,
            zones: std::collections::BTreeMap::new(),
        }
    }
}

impl CarbonDecl {
    /// The zone of a pool that names none.
    pub fn default_zone(&self) -> String {
        match (&self.default_zone, self.zones.len()) {
            (Some(z), _) => z.clone(),
            (None, 1) => self.zones.keys().next().cloned().unwrap_or_default(),
            _ => super::carbon::DEFAULT_ZONE.into(),
        }
    }
}

/// Per-node agent identity on Kubernetes without per-node secrets: each agent
/// pod presents its projected service-account token (audience `audience`); it
/// may register only as the node the token names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesAuth {
    /// The cluster's service-account issuer (`kubectl get --raw
    /// /.well-known/openid-configuration`).
    pub issuer: String,
    pub audience: String,
    /// The agents' service account, as the token's `sub`.
    pub service_account: String,
    pub jwks_url: String,
    /// CA of the JWKS endpoint, and a bearer token to fetch it (the
    /// scheduler's own service account; in-cluster defaults).
    pub ca_cert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl Default for KubernetesAuth {
    fn default() -> KubernetesAuth {
        let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        KubernetesAuth {
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            audience: "greenfill".into(),
            service_account: "system:serviceaccount:greenfill:greenfill-agent".into(),
            jwks_url: "https://kubernetes.default.svc/openid/v1/jwks".into(),
            ca_cert: Some(sa.join("ca.crt")),
            token_file: Some(sa.join("token")),
        }
    }
}

/// A user credential: its name, the uids and gids its jobs may run as (empty:
/// only the agent's default, `nobody`), and whether it administers every job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDecl {
    pub name: String,
    pub token: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub admin: bool,
    /// Reads PlanService (the plan, the nodes, the audit log) without seeing
    /// or touching others' jobs.
    #[serde(default)]
    pub viewer: bool,
}

/// An agent credential that names the nodes it may be: a registration for
/// another name is refused (PERMISSION_DENIED), so a node holding it cannot
/// claim another node's jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToken {
    pub token: String,
    /// Node names: exact, or a prefix ending in `*` (`rack7-*`).
    pub nodes: Vec<String>,
}

impl NodeToken {
    pub fn allows(&self, node: &str) -> bool {
        self.nodes.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => node.starts_with(prefix),
            None => p == node,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDecl {
    pub name: String,
    pub cores: f64,
    pub memory_gib: f64,
    #[serde(default)]
    pub gpus: u32,
    /// Watts per GPU idle and busy [default: `power.gpu_idle_w`, `power.gpu_busy_w`].
    pub gpu_idle_w: Option<f64>,
    pub gpu_busy_w: Option<f64>,
    /// How this pool's idle nodes are put to sleep and woken. Without it the
    /// pool's nodes are never powered off (pools that run online services).
    pub power: Option<PoolPowerDecl>,
    /// Its grid zone (a key of `[carbon.zones]`); default `carbon.default_zone`.
    pub zone: Option<String>,
    /// Embodied carbon per node-hour, g CO2e (the M of a job's SCI; default 0).
    #[serde(default)]
    pub embodied_g_per_hour: f64,
}

/// `[pools.power]`: a sleepable pool (Slurm's power saving, per pool).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPowerDecl {
    /// `exec` (default: site commands, like Slurm's `SuspendProgram`), `redfish`
    /// (the nodes' BMCs) or `agent` (the node's agent suspends its machine;
    /// Wake-on-LAN wakes it).
    #[serde(default = "d_driver")]
    pub driver: String,
    /// `exec`: argv run with the node's name appended.
    #[serde(default)]
    pub suspend_command: Vec<String>,
    #[serde(default)]
    pub resume_command: Vec<String>,
    /// A driver call (a command, a BMC request) gets this long.
    #[serde(default = "d_call_timeout")]
    pub call_timeout: String,
    /// Durations; defaults from `greenfill_planner::power::PowerSettings`.
    pub suspend_after: Option<String>,
    pub wake: Option<String>,
    pub min_off: Option<String>,
    pub suspend_timeout: Option<String>,
    pub resume_timeout: Option<String>,
    #[serde(default)]
    pub reserve: u32,
    pub max_suspends_per_day: Option<u32>,
    /// Driver calls per minute for the pool (Slurm's `SuspendRate`/`ResumeRate`;
    /// defaults 60 and 300, 0 = no limit).
    pub suspend_rate: Option<u32>,
    pub resume_rate: Option<u32>,
    /// Energy a wake costs beyond idle power while booting, Wh (default 0),
    /// weighed by the planner.
    #[serde(default)]
    pub wake_energy_wh: f64,
    /// Nodes of this pool that are never powered off (Slurm's `SuspendExcNodes`).
    #[serde(default)]
    pub exclude: Vec<String>,
    pub redfish: Option<RedfishDecl>,
    pub agent: Option<AgentDecl>,
}

/// `[pools.power.agent]`: the nodes' agents run their `--power-down-command`;
/// a Wake-on-LAN magic packet to each node's MAC wakes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDecl {
    /// Where magic packets go (default the limited broadcast, port 9).
    #[serde(default = "d_broadcast")]
    pub broadcast: String,
    /// Node name → MAC address, `aa:bb:cc:dd:ee:ff`.
    pub macs: std::collections::BTreeMap<String, String>,
}

fn d_broadcast() -> String {
    "255.255.255.255:9".into()
}

/// A MAC address `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut out = [0u8; 6];
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// `[pools.power.redfish]`: the BMCs, over HTTPS with basic auth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedfishDecl {
    pub username: String,
    /// The password, or `password_env`: the variable that holds it.
    pub password: Option<String>,
    pub password_env: Option<String>,
    /// A PEM CA certificate the BMCs' certificates chain to.
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate (BMCs ship self-signed ones); off by default.
    #[serde(default)]
    pub insecure_tls: bool,
    /// Node name → its `ComputerSystem` URL, e.g.
    /// `https://10.0.0.5/redfish/v1/Systems/1`.
    pub systems: std::collections::BTreeMap<String, String>,
}

fn d_driver() -> String {
    "exec".into()
}
fn d_call_timeout() -> String {
    "60s".into()
}

/// A pool's power policy, checked.
#[derive(Debug, Clone)]
pub struct PoolPower {
    pub settings: greenfill_planner::power::PowerSettings,
    pub wake_wh: f64,
    pub driver: DriverSpec,
    pub call_timeout: Duration,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum DriverSpec {
    Exec { suspend: Vec<String>, resume: Vec<String> },
    Redfish(RedfishDecl),
    Agent { broadcast: SocketAddr, macs: std::collections::BTreeMap<String, [u8; 6]> },
}

impl PoolPowerDecl {
    /// Check every key (`key` is where the table is, e.g. `pools[1].power`),
    /// with `lead` the planning interval plus a slot (see `PowerSettings::lead_s`).
    pub fn resolve(&self, key: &str, lead: Duration) -> Result<PoolPower, Vec<Invalid>> {
        let mut e = Errors { prefix: key, list: Vec::new() };
        let settings = self.settings(&mut e, lead);
        let call_timeout = e.secs("call_timeout", &Some(self.call_timeout.clone()), 60);
        if call_timeout <= 0 {
            e.bad("call_timeout", format!("{:?}", self.call_timeout), "must be positive");
        }
        for x in settings.errors() {
            e.bad(x.key, x.value, x.why);
        }
        if !(self.wake_energy_wh.is_finite() && self.wake_energy_wh >= 0.0) {
            e.bad("wake_energy_wh", self.wake_energy_wh.to_string(), "must be >= 0");
        }
        let driver = match self.driver.as_str() {
            "exec" => self.exec(&mut e),
            "redfish" => self.redfish(&mut e),
            "agent" => self.agent(&mut e),
            other => {
                e.bad("driver", format!("{other:?}"), "allowed values are exec, redfish, agent");
                DriverSpec::Exec { suspend: Vec::new(), resume: Vec::new() }
            }
        };
        if !e.list.is_empty() {
            return Err(e.list);
        }
        Ok(PoolPower {
            settings,
            wake_wh: self.wake_energy_wh,
            driver,
            call_timeout: Duration::from_secs(u64::try_from(call_timeout).unwrap_or(60)),
            exclude: self.exclude.clone(),
        })
    }

    fn settings(&self, e: &mut Errors<'_>, lead: Duration) -> greenfill_planner::power::PowerSettings {
        let d = greenfill_planner::power::PowerSettings::default();
        greenfill_planner::power::PowerSettings {
            suspend_after_s: e.secs("suspend_after", &self.suspend_after, d.suspend_after_s),
            wake_s: e.secs("wake", &self.wake, d.wake_s),
            lead_s: i64::try_from(lead.as_secs()).unwrap_or(60),
            suspend_timeout_s: e.secs("suspend_timeout", &self.suspend_timeout, d.suspend_timeout_s),
            resume_timeout_s: e.secs("resume_timeout", &self.resume_timeout, d.resume_timeout_s),
            min_off_s: e.secs("min_off", &self.min_off, d.min_off_s),
            reserve: self.reserve,
            max_suspends_per_day: self.max_suspends_per_day.unwrap_or(d.max_suspends_per_day),
            suspend_rate: self.suspend_rate.unwrap_or(d.suspend_rate),
            resume_rate: self.resume_rate.unwrap_or(d.resume_rate),
        }
    }

    fn exec(&self, e: &mut Errors<'_>) -> DriverSpec {
        for (k, argv) in [("suspend_command", &self.suspend_command), ("resume_command", &self.resume_command)] {
            if argv.first().is_none_or(String::is_empty) {
                e.bad(k, format!("{argv:?}"), "the exec driver needs a command (argv; the node name is appended)");
            }
        }
        DriverSpec::Exec { suspend: self.suspend_command.clone(), resume: self.resume_command.clone() }
    }

    fn redfish(&self, e: &mut Errors<'_>) -> DriverSpec {
        let Some(r) = &self.redfish else {
            e.bad("redfish", "(missing)".into(), "the redfish driver needs [..power.redfish] with systems");
            return DriverSpec::Exec { suspend: Vec::new(), resume: Vec::new() };
        };
        if r.systems.is_empty() {
            e.bad("redfish.systems", "{}".into(), "give each node's BMC address (node = URL of its System)");
        }
        for (node, url) in &r.systems {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                e.bad(&format!("redfish.systems.{node}"), format!("{url:?}"), "must be an https:// URL");
            }
        }
        if r.password.is_some() == r.password_env.is_some() {
            e.bad("redfish.password", "…".into(), "give exactly one of password or password_env");
        }
        DriverSpec::Redfish(r.clone())
    }

    fn agent(&self, e: &mut Errors<'_>) -> DriverSpec {
        let a = self.agent.clone().unwrap_or(AgentDecl { broadcast: d_broadcast(), macs: Default::default() });
        let broadcast = a.broadcast.parse::<SocketAddr>().unwrap_or_else(|_| {
            e.bad("agent.broadcast", format!("{:?}", a.broadcast), "not an address (e.g. 255.255.255.255:9)");
            SocketAddr::from(([255, 255, 255, 255], 9))
        });
        if a.macs.is_empty() {
            e.bad("agent.macs", "{}".into(), "Wake-on-LAN wakes the nodes: give each node's MAC address");
        }
        let mut macs = std::collections::BTreeMap::new();
        for (node, mac) in &a.macs {
            match parse_mac(mac) {
                Some(m) => {
                    macs.insert(node.clone(), m);
                }
                None => e.bad(&format!("agent.macs.{node}"), format!("{mac:?}"), "not a MAC (aa:bb:cc:dd:ee:ff)"),
            }
        }
        DriverSpec::Agent { broadcast, macs }
    }
}

/// Errors of one table, each key under `prefix`.
struct Errors<'a> {
    prefix: &'a str,
    list: Vec<Invalid>,
}

impl Errors<'_> {
    fn bad(&mut self, key: &str, value: String, why: &str) {
        self.list.push(Invalid { key: format!("{}.{key}", self.prefix), value, why: why.to_owned() });
    }

    /// A duration in whole seconds (rounded up), or `default` when unset; a
    /// negative or unparsable one is named.
    fn secs(&mut self, key: &str, v: &Option<String>, default: i64) -> i64 {
        let Some(v) = v else { return default };
        if v.trim_start().starts_with('-') {
            self.bad(key, format!("{v:?}"), "must not be negative");
            return default;
        }
        match parse_duration(v) {
            #[allow(clippy::cast_possible_truncation, reason = "durations far below i64::MAX s")]
            Some(d) => d.ceil() as i64,
            None => {
                self.bad(key, format!("{v:?}"), "not a duration (e.g. 90s, 5m, 1h)");
                default
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Planning {
    #[serde(with = "dur")]
    pub interval: Duration,
    /// Shortest gap between two plans when events (submissions, exits) ask for one.
    #[serde(with = "dur")]
    pub min_gap: Duration,
    #[serde(with = "dur")]
    pub slot: Duration,
    #[serde(with = "dur")]
    pub horizon: Duration,
    /// Nodes silent for longer get no batch capacity, and their jobs are requeued.
    #[serde(with = "dur")]
    pub stale_after: Duration,
    /// Telemetry is kept as means over buckets of this length...
    #[serde(with = "dur")]
    pub telemetry_bucket: Duration,
    /// ...for this long.
    #[serde(with = "dur")]
    pub telemetry_retention: Duration,
    pub forecast: String,
    pub quantile: f64,
    /// Share of each node's cores kept free of batch work on top of the forecast.
    pub cpu_margin: f64,
    pub mem_margin: f64,
    /// What waiting costs the plan, as a share of carbon per hour of delay.
    pub delay_cost: f64,
    /// Share of each job's duration its planned end keeps before its deadline,
    /// for the agent's guard slowing it down (default 0.05).
    pub guard_slack: f64,
    /// Carbon intensity, gCO2/kWh, when no file is given.
    pub carbon_constant: f64,
    /// A carbon CSV (any format `greenfill data inspect` reads); its values are
    /// taken by time of day and year from the file, as a forecast.
    pub carbon_file: Option<PathBuf>,
    /// LP time limit.
    #[serde(with = "dur")]
    pub solve_limit: Duration,
    /// An evicted job waits this long before it may run again, doubled at each
    /// further eviction (at most 32×).
    #[serde(with = "dur")]
    pub eviction_backoff: Duration,
    /// A job evicted this many times fails with a reason that says so.
    pub max_evictions: u32,
    /// A job whose start fails for a cause that may pass (its image's registry
    /// or the node's containerd down) is requeued with the eviction backoff, and
    /// fails at this many attempts.
    pub max_start_attempts: u32,
    /// A node that evicted batch for memory gets no new batch memory in the
    /// plan for this long after its last eviction (0 = no cool-down), so the
    /// next attempt goes to another node or waits, instead of filling the same
    /// node again.
    #[serde(with = "dur")]
    pub eviction_cooldown: Duration,
    /// How long a node is expected to take to pull an image it does not hold,
    /// until a node has pulled that image once (then its measured time is used).
    /// An image job's planned run time includes it unless every node it may run
    /// on holds the image.
    #[serde(with = "dur")]
    pub image_pull_estimate: Duration,
    /// An attempt the scheduler runs on a node whose agent registers without it
    /// is requeued as lost after this long, unless an event for it arrives first.
    #[serde(with = "dur")]
    pub reconcile_grace: Duration,
}

impl Planning {
    /// The planner's options from this config (checked by [`Config::validate`]
    /// with [`PlanOptions::errors`]).
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            cpu_margin: self.cpu_margin,
            mem_margin: self.mem_margin,
            delay_cost: self.delay_cost,
            time_limit: self.solve_limit,
            ..PlanOptions::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Per client (token, or peer address without one).
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_command_bytes: usize,
    pub max_env_bytes: usize,
    /// Allow `run_as_uid = 0`.
    pub allow_root_jobs: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Power {
    /// Per node, for energy estimates (agents' measured power replaces it later).
    pub idle_w: f64,
    pub max_w: f64,
    pub pue: f64,
    /// Per GPU, idle and busy (an A100 SXM idles near 50 W and runs 250–400 W);
    /// a pool's `gpu_idle_w` / `gpu_busy_w` overrides them.
    pub gpu_idle_w: f64,
    pub gpu_busy_w: f64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:7070".parse().expect("literal"),
            metrics_listen: None,
            data_dir: default_data_dir(),
            insecure_local: false,
            user_tokens: Vec::new(),
            agent_tokens: Vec::new(),
            node_tokens: Vec::new(),
            users: Vec::new(),
            kubernetes: None,
            tls: None,
            pools: Vec::new(),
            planning: Planning::default(),
            limits: Limits::default(),
            power: Power::default(),
            carbon: CarbonDecl::default(),
            objective: ObjectiveDecl::default(),
            price: None,
            store: None,
            replication: Replication::default(),
        }
    }
}

impl Default for Planning {
    fn default() -> Planning {
        Planning {
            interval: Duration::from_secs(60),
            min_gap: Duration::from_secs(1),
            slot: Duration::from_secs(300),
            horizon: Duration::from_secs(24 * 3600),
            stale_after: Duration::from_secs(15 * 60),
            telemetry_bucket: Duration::from_secs(300),
            telemetry_retention: Duration::from_secs(14 * 24 * 3600),
            forecast: "greenfill".into(),
            quantile: 0.95,
            cpu_margin: 0.1,
            mem_margin: 0.1,
            delay_cost: PlanOptions::default().delay_cost,
            guard_slack: GUARD_SLACK,
            carbon_constant: 400.0,
            carbon_file: None,
            solve_limit: Duration::from_secs(10),
            eviction_backoff: Duration::from_secs(60),
            max_evictions: 3,
            max_start_attempts: 3,
            eviction_cooldown: Duration::from_secs(300),
            image_pull_estimate: Duration::from_secs(60),
            reconcile_grace: Duration::from_secs(15),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 1 << 20,
            requests_per_second: 5_000,
            burst: 10_000,
            max_command_bytes: 64 << 10,
            max_env_bytes: 64 << 10,
            allow_root_jobs: false,
        }
    }
}

impl Default for Power {
    fn default() -> Power {
        Power { idle_w: 100.0, max_w: 300.0, pue: 1.2, gpu_idle_w: 50.0, gpu_busy_w: 300.0 }
    }
}

/// `$XDG_DATA_HOME/greenfill`, else `~/.local/share/greenfill`, else `/var/lib/greenfill`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("greenfill");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/greenfill"),
        None => PathBuf::from("/var/lib/greenfill"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Every key that is out of range, each with its value and the rule.
    #[error("{path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { path: String, errors: Vec<Invalid> },
}

/// One bad key of a config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {why}")]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub why: String,
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let c = Config::read(path)?;
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    /// Parse without validating (flags are merged in, then [`Config::validate`]).
    pub fn read(path: &std::path::Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p, message: e.to_string() })
    }

    /// Check every key; report every bad one at once, each with its value.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, value: String, why: &str| {
            errors.push(Invalid { key: key.to_owned(), value, why: why.to_owned() });
        };
        if self.insecure_local && !self.listen.ip().is_loopback() {
            bad("listen", self.listen.to_string(), "insecure_local serves only on a loopback address");
        }
        if let Some(url) = &self.store
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bad("store", crate::store::postgres::redact(url), "must be a postgres:// URL (unset: SQLite in data_dir)");
        }
        let r = &self.replication;
        if !(r.retry < r.renew_deadline && r.renew_deadline < r.lease) {
            bad(
                "replication.renew_deadline",
                format!("{:?}", r.renew_deadline),
                &format!("need retry ({:?}) < renew_deadline < lease ({:?})", r.retry, r.lease),
            );
        }
        let no_agents = self.agent_tokens.is_empty() && self.node_tokens.is_empty() && self.kubernetes.is_none();
        let no_users = self.user_tokens.is_empty() && self.users.is_empty();
        if !self.insecure_local && (no_users || no_agents) {
            bad(
                "user_tokens/agent_tokens",
                "[]".into(),
                "set user_tokens and agent_tokens or node_tokens (or run with --insecure-local on loopback): an API \
                 without tokens refuses every call",
            );
        }
        let agent_tokens = || self.agent_tokens.iter().chain(self.node_tokens.iter().map(|n| &n.token));
        let user_tokens = || self.user_tokens.iter().chain(self.users.iter().map(|u| &u.token));
        if user_tokens().any(|u| agent_tokens().any(|a| a == u)) {
            bad("agent_tokens", "…".into(), "a token is both a user's and an agent's; keep them separate");
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() || self.users[..i].iter().any(|o| o.name == u.name) {
                bad(&format!("users[{i}].name"), format!("{:?}", u.name), "must be set and unique");
            }
            if u.token.is_empty()
                || self.user_tokens.contains(&u.token)
                || self.users[..i].iter().any(|o| o.token == u.token)
            {
                bad(&format!("users[{i}].token"), "…".into(), "must be set and belong to one user only");
            }
            if !self.limits.allow_root_jobs && u.uids.contains(&0) {
                bad(
                    &format!("users[{i}].uids"),
                    format!("{:?}", u.uids),
                    "contains 0 and limits.allow_root_jobs is off",
                );
            }
        }
        for (i, n) in self.node_tokens.iter().enumerate() {
            if n.token.is_empty() {
                bad(&format!("node_tokens[{i}].token"), "\"\"".into(), "must not be empty");
            }
            if n.nodes.is_empty() || n.nodes.iter().any(|p| p.is_empty() || p == "*") {
                bad(
                    &format!("node_tokens[{i}].nodes"),
                    format!("{:?}", n.nodes),
                    "name one or more nodes (or prefixes ending in `*`); a token for every node is an agent_tokens entry",
                );
            }
            if self.agent_tokens.contains(&n.token) || self.node_tokens[..i].iter().any(|o| o.token == n.token) {
                bad(&format!("node_tokens[{i}].token"), "…".into(), "is listed twice; give each credential one entry");
            }
        }
        let p = &self.planning;
        if p.slot.is_zero() || p.horizon < p.slot {
            bad("planning.horizon", format!("{:?}", p.horizon), "must be at least one slot");
        }
        if p.interval > p.slot {
            // Jobs start only at a plan whose slot 0 is now; plans further apart
            // than a slot would start jobs late and miss deadlines planned to the
            // last slot.
            bad(
                "planning.interval",
                format!("{:?}", p.interval),
                &format!("must not be longer than planning.slot ({:?})", p.slot),
            );
        }
        if !(p.quantile > 0.0 && p.quantile < 1.0) {
            bad("planning.quantile", p.quantile.to_string(), "need 0 < q < 1");
        }
        if greenfill_forecast::by_name(&p.forecast).is_none() {
            let known: Vec<&str> = greenfill_forecast::models().iter().map(|m| m.name()).collect();
            bad("planning.forecast", p.forecast.clone(), &format!("known: {}", known.join(", ")));
        }
        if !(0.0..=0.5).contains(&p.guard_slack) {
            bad("planning.guard_slack", p.guard_slack.to_string(), "need 0 <= guard_slack <= 0.5 (share of duration)");
        }
        // The planner's own option rules, named by their config keys.
        let options =
            p.plan_options().errors().into_iter().chain(intensity_error("carbon_constant", p.carbon_constant));
        for e in options {
            if let ProblemError::Option { field, value, why } = e {
                let key = if field == "time_limit" { "solve_limit" } else { field };
                bad(&format!("planning.{key}"), value, why);
            }
        }
        if !(self.power.idle_w >= 0.0 && self.power.max_w >= self.power.idle_w && self.power.pue >= 1.0) {
            bad("power", format!("{:?}", self.power), "need 0 <= idle_w <= max_w and pue >= 1");
        }
        if !(self.power.gpu_idle_w >= 0.0 && self.power.gpu_busy_w >= self.power.gpu_idle_w) {
            bad(
                "power.gpu_busy_w",
                format!("{} (gpu_idle_w {})", self.power.gpu_busy_w, self.power.gpu_idle_w),
                "need 0 <= gpu_idle_w <= gpu_busy_w",
            );
        }
        if p.max_start_attempts == 0 {
            bad("planning.max_start_attempts", "0".into(), "must be >= 1 (the attempt that fails the job)");
        }
        if p.max_evictions == 0 {
            bad("planning.max_evictions", "0".into(), "must be >= 1 (the eviction that fails the job)");
        }
        if p.eviction_backoff.is_zero() {
            bad("planning.eviction_backoff", "0s".into(), "must be positive");
        }
        if self.limits.requests_per_second == 0 {
            bad("limits.requests_per_second", "0".into(), "must be > 0");
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if let Some(Err(e)) = pool
                .power
                .as_ref()
                .map(|p| p.resolve(&format!("pools[{i}].power"), self.planning.interval + self.planning.slot))
            {
                errors.extend(e);
            }
        }
        let mut bad = |key: &str, value: String, why: &str| {
            errors.push(Invalid { key: key.to_owned(), value, why: why.to_owned() });
        };
        for pool in &self.pools {
            if pool.name.is_empty()
                || pool.cores.is_nan()
                || pool.cores <= 0.0
                || pool.memory_gib.is_nan()
                || pool.memory_gib <= 0.0
            {
                bad("pools", pool.name.clone(), "each pool needs a name, cores > 0 and memory_gib > 0");
            }
        }
        self.validate_carbon(&mut bad);
        self.validate_objective(&mut bad);
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { path: path.to_owned(), errors }) }
    }
}

impl Config {
    /// `[carbon]` and the pools' zones: every source built (secrets read), every
    /// zone named exists.
    fn validate_objective(&self, bad: &mut impl FnMut(&str, String, &str)) {
        let o = &self.objective;
        if !["carbon", "cost", "both"].contains(&o.mode.as_str()) {
            bad("objective.mode", format!("{:?}", o.mode), "must be one of carbon, cost, both");
        } else if o.mode != "carbon" && self.price.is_none() {
            bad("objective.mode", format!("{:?}", o.mode), "needs a [price] section with sources");
        }
        if !(o.carbon_price.is_finite() && o.carbon_price >= 0.0) {
            bad("objective.carbon_price", o.carbon_price.to_string(), "must be >= 0 (currency per tonne CO2)");
        } else if o.carbon_price > 0.0 && o.mode != "both" {
            bad("objective.carbon_price", o.carbon_price.to_string(), "only weighed with objective.mode = \"both\"");
        }
        let Some(p) = &self.price else { return };
        if p.refresh.is_zero() || p.timeout.is_zero() {
            bad("price", format!("refresh {:?}, timeout {:?}", p.refresh, p.timeout), "must be positive");
        }
        for (name, z) in &p.zones {
            if !self.carbon.zones.contains_key(name) {
                let known: Vec<&str> = self.carbon.zones.keys().map(String::as_str).collect();
                bad(
                    &format!("price.zones.{name}"),
                    format!("{name:?}"),
                    &format!("no such zone; [carbon.zones] has: {}", known.join(", ")),
                );
            }
            Self::validate_price_sources(&format!("price.zones.{name}"), &z.sources, bad);
        }
        Self::validate_price_sources("price", &p.sources, bad);
    }

    fn validate_price_sources(prefix: &str, sources: &[PriceSourceDecl], bad: &mut impl FnMut(&str, String, &str)) {
        if sources.is_empty() {
            bad(&format!("{prefix}.sources"), "[]".into(), "needs at least one source");
        }
        for (i, s) in sources.iter().enumerate() {
            let key = |field: &str| format!("{prefix}.sources[{i}]{field}");
            match s {
                PriceSourceDecl::Constant { value } if !value.is_finite() => {
                    bad(&key(".value"), value.to_string(), "must be a finite price per MWh");
                }
                PriceSourceDecl::Entsoe { token_file: None, token_env: None, .. } => {
                    bad(&key(""), "entsoe".into(), "needs token_file or token_env (the ENTSO-E security token)");
                }
                PriceSourceDecl::File { path } if !path.exists() => {
                    bad(&key(".path"), path.display().to_string(), "no such file");
                }
                _ => {}
            }
        }
    }

    fn validate_carbon(&self, bad: &mut impl FnMut(&str, String, &str)) {
        let c = &self.carbon;
        if let Err(errors) = super::carbon::build_zones(self) {
            for e in errors {
                bad(&e.key, e.value, &e.why);
            }
        }
        let builtin = c.default_zone() == super::carbon::DEFAULT_ZONE;
        let known = |z: &str| c.zones.contains_key(z) || (builtin && z == super::carbon::DEFAULT_ZONE);
        let names = || c.zones.keys().cloned().collect::<Vec<_>>().join(", ");
        if let Some(z) = c.default_zone.as_deref().filter(|z| !known(z)) {
            bad("carbon.default_zone", format!("{z:?}"), &format!("no such zone; [carbon.zones] has: {}", names()));
        }
        for (i, p) in self.pools.iter().enumerate() {
            if let Some(z) = p.zone.as_deref().filter(|z| !known(z)) {
                bad(
                    &format!("pools[{i}].zone"),
                    format!("{z:?}"),
                    &format!("no such zone; [carbon.zones] has: {}", names()),
                );
            }
            if !(p.embodied_g_per_hour.is_finite() && p.embodied_g_per_hour >= 0.0) {
                bad(&format!("pools[{i}].embodied_g_per_hour"), p.embodied_g_per_hour.to_string(), "must be >= 0");
            }
        }
        if c.check_every.is_zero() || c.timeout.is_zero() || c.stale_after.is_zero() {
            bad("carbon", format!("{c:?}"), "check_every, timeout and stale_after must be positive");
        }
    }

    /// The power policy of each sleepable pool, by pool name (checked by
    /// [`Config::validate`]).
    pub fn pool_power(&self) -> std::collections::BTreeMap<String, PoolPower> {
        self.pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let power = p
                    .power
                    .as_ref()?
                    .resolve(&format!("pools[{i}].power"), self.planning.interval + self.planning.slot)
                    .ok()?;
                Some((p.name.clone(), power))
            })
            .collect()
    }
}

mod dur {
    use super::*;
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a duration (e.g. 90s, 5m, 1h, 7d)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_key_is_named_at_once_with_its_value() {
        let mut c = Config { insecure_local: true, ..Config::default() };
        c.validate("defaults").unwrap();
        c.planning.mem_margin = 1.5;
        c.planning.carbon_constant = -1.0;
        c.planning.delay_cost = 2.0;
        let ConfigError::Invalid { path, errors } = c.validate("x.toml").unwrap_err() else { panic!("not Invalid") };
        assert_eq!(path, "x.toml");
        let keys: Vec<(&str, &str)> = errors.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(
            keys,
            [("planning.mem_margin", "1.5"), ("planning.delay_cost", "2"), ("planning.carbon_constant", "-1")]
        );
        let text = c.validate("x.toml").unwrap_err().to_string();
        assert!(text.starts_with("x.toml: planning.mem_margin = 1.5: must be in [0, 1)"), "{text}");
    }

    #[test]
    fn a_bad_objective_or_price_is_refused_naming_the_key() {
        let keys = |text: &str| -> Vec<String> {
            let c: Config = toml::from_str(&format!("insecure_local = true\n{text}")).unwrap();
            match c.validate("x.toml") {
                Ok(()) => Vec::new(),
                Err(ConfigError::Invalid { errors, .. }) => {
                    errors.iter().map(|e| format!("{} = {}: {}", e.key, e.value, e.why)).collect()
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            keys("[objective]\nmode = \"cheap\""),
            ["objective.mode = \"cheap\": must be one of carbon, cost, both"]
        );
        assert_eq!(
            keys("[objective]\nmode = \"cost\""),
            ["objective.mode = \"cost\": needs a [price] section with sources"]
        );
        let priced = "[[price.sources]]\nkind = \"constant\"\nvalue = 60\n";
        assert_eq!(
            keys(&format!("[objective]\nmode = \"both\"\ncarbon_price = -80\n{priced}")),
            ["objective.carbon_price = -80: must be >= 0 (currency per tonne CO2)"]
        );
        assert_eq!(
            keys(&format!("[objective]\ncarbon_price = 80\n{priced}")),
            ["objective.carbon_price = 80: only weighed with objective.mode = \"both\""]
        );
        assert_eq!(
            keys(
                "[objective]\nmode = \"cost\"\n[[price.sources]]\nkind = \"constant\"\nvalue = 1\n[[price.sources]]\nkind = \"entsoe\"\nzone = \"FR\""
            ),
            ["price.sources[1] = entsoe: needs token_file or token_env (the ENTSO-E security token)"]
        );
        assert_eq!(keys(&format!("[objective]\nmode = \"both\"\ncarbon_price = 80\n{priced}")), Vec::<String>::new());
        assert_eq!(keys("[price]\nsources = []"), ["price.sources = []: needs at least one source"]);
        assert_eq!(
            keys(&format!("{priced}[price.zones.PJM]\nsources = [{{ kind = \"constant\", value = 10 }}]\n")),
            ["price.zones.PJM = \"PJM\": no such zone; [carbon.zones] has: "]
        );
        let zoned = "[carbon.zones.PJM]\nsources = [{ kind = \"constant\", value = 400 }]\n";
        assert_eq!(
            keys(&format!("{priced}[price.zones.PJM]\nsources = []\n{zoned}")),
            ["price.zones.PJM.sources = []: needs at least one source"]
        );
        let e = toml::from_str::<Config>("[[price.sources]]\nkind = \"nordpool\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant `nordpool`"), "{e}");
    }

    #[test]
    fn bad_power_config_is_refused_naming_each_key() {
        let text = r#"
            insecure_local = true
            [[pools]]
            name = "a"
            cores = 8
            memory_gib = 16
            [pools.power]
            driver = "ipmi"
            wake = "-5m"
            resume_timeout = "0s"
            [[pools]]
            name = "b"
            cores = 8
            memory_gib = 16
            [pools.power]
            driver = "redfish"
            [pools.power.redfish]
            username = "root"
            password = "x"
            systems = {}
            [[pools]]
            name = "c"
            cores = 8
            memory_gib = 16
            [pools.power]
            suspend_command = []
            resume_command = ["wake"]
        "#;
        let c: Config = toml::from_str(text).unwrap();
        let ConfigError::Invalid { errors, .. } = c.validate("x.toml").unwrap_err() else { panic!("not Invalid") };
        let keys: Vec<String> = errors.iter().map(|e| format!("{} = {}", e.key, e.value)).collect();
        assert_eq!(
            keys,
            [
                "pools[0].power.wake = \"-5m\"",
                "pools[0].power.resume_timeout = 0s",
                "pools[0].power.driver = \"ipmi\"",
                "pools[1].power.redfish.systems = {}",
                "pools[2].power.suspend_command = []",
            ]
        );
        assert!(errors[2].why.contains("allowed values are exec, redfish"), "{:?}", errors[2]);
        assert!(errors[3].why.contains("BMC address"), "{:?}", errors[3]);
        // A good one resolves, its lead being the interval plus a slot.
        let ok: Config = toml::from_str(&text.replace(
            "driver = \"ipmi\"\n            wake = \"-5m\"\n            resume_timeout = \"0s\"",
            "suspend_command = [\"s\"]\n            resume_command = [\"r\"]",
        ))
        .unwrap();
        let power = ok.pool_power();
        assert_eq!(power["a"].settings.lead_s, 60 + 300);
    }
}
