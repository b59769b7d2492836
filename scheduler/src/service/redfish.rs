//! The `redfish` power driver: DMTF Redfish (DSP0266) `ComputerSystem.Reset`
//! with `GracefulShutdown` or `On`, then `PowerState` polled until it reads
//! `Off` or `On`. HTTPS with basic auth; the reset target is read from the
//! system's `Actions`, as the standard says, and a system already in the
//! wanted state is not reset again (a call repeated after a restart is
//! harmless).

use super::config::RedfishDecl;
use super::power::{CallFuture, Driver};
use greenfill_planner::power::Call;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Redfish {
    client: reqwest::Client,
    username: String,
    password: String,
    systems: BTreeMap<String, String>,
    timeout: Duration,
    poll: Duration,
}

impl std::fmt::Debug for Redfish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redfish")
            .field("username", &self.username)
            .field("systems", &self.systems)
            .finish_non_exhaustive()
    }
}

impl Redfish {
    /// `timeout` bounds a whole call: the reset and the polling.
    pub fn new(d: &RedfishDecl, timeout: Duration) -> anyhow::Result<Redfish> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .danger_accept_invalid_certs(d.insecure_tls);
        if let Some(ca) = &d.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("redfish.ca_cert {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("redfish.ca_cert {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        let password = match (&d.password, &d.password_env) {
            (Some(p), _) => p.clone(),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| anyhow::anyhow!("redfish.password_env: ${var} is not set"))?
            }
            (None, None) => anyhow::bail!("redfish: no password"),
        };
        Ok(Redfish {
            client: b.build()?,
            username: d.username.clone(),
            password,
            systems: d.systems.clone(),
            timeout,
            poll: Duration::from_millis(500),
        })
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, String> {
        let r = self
            .client
            .get(url)
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        r.json().await.map_err(|e| format!("GET {url}: not a Redfish resource: {e}"))
    }

    async fn reset(&self, node: &str, call: Call) -> Result<(), String> {
        let url = self.systems.get(node).ok_or_else(|| format!("no BMC address for {node} in redfish.systems"))?;
        let (reset, want) = match call {
            Call::Suspend => ("GracefulShutdown", "Off"),
            Call::Resume => ("On", "On"),
        };
        let system = self.get(url).await?;
        if system["PowerState"] == want {
            return Ok(());
        }
        let target = system["Actions"]["#ComputerSystem.Reset"]["target"].as_str().map_or_else(
            || format!("{}/Actions/ComputerSystem.Reset", url.trim_end_matches('/')),
            |t| absolute(url, t),
        );
        let r = self
            .client
            .post(&target)
            .basic_auth(&self.username, Some(&self.password))
            .json(&serde_json::json!({ "ResetType": reset }))
            .send()
            .await
            .map_err(|e| format!("POST {target}: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(format!("POST {target} ResetType={reset}: HTTP {status}: {}", snippet(&body)));
        }
        loop {
            let state = self.get(url).await?;
            if state["PowerState"] == want {
                return Ok(());
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

impl Driver for Redfish {
    fn call(self: Arc<Self>, node: String, call: Call) -> CallFuture {
        Box::pin(async move {
            let url = self.systems.get(&node).cloned().unwrap_or_default();
            match tokio::time::timeout(self.timeout, self.reset(&node, call)).await {
                Ok(r) => r,
                Err(_) => Err(format!("BMC {url} did not reach the state within {} s", self.timeout.as_secs())),
            }
        })
    }
}

/// A target path made absolute against the system's URL.
fn absolute(system: &str, target: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        return target.to_owned();
    }
    let origin_end = system.find("://").map_or(0, |i| i + 3);
    let host_end = system[origin_end..].find('/').map_or(system.len(), |i| origin_end + i);
    format!("{}{target}", &system[..host_end])
}

fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_target_path_is_made_absolute_against_the_system() {
        let sys = "https://10.0.0.5:8443/redfish/v1/Systems/1";
        assert_eq!(
            super::absolute(sys, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"),
            "https://10.0.0.5:8443/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
        assert_eq!(super::absolute(sys, "https://other/x"), "https://other/x");
    }
}
