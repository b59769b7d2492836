//! Agents on Kubernetes prove which node they are with a projected
//! service-account token (`audience: greenfill`), which the kubelet issues and
//! rotates for each pod: no per-node secret to provision. The token is a JWT
//! signed by the cluster; since Kubernetes 1.30 it names the pod's node
//! (`kubernetes.io.node.name`). The scheduler checks the signature against the
//! cluster's JWKS (`/openid/v1/jwks`, refreshed every [`REFRESH`]), the issuer,
//! the audience, the expiry and the service account, and the agent may then
//! register as that node only.

use super::config::KubernetesAuth;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde::Deserialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::Status;

/// How often the cluster's signing keys are fetched again (it rotates them
/// rarely; an unknown key id is refused until the next fetch).
pub const REFRESH: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubeClaims>,
}

#[derive(Debug, Deserialize)]
struct KubeClaims {
    node: Option<Named>,
    pod: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

/// The cluster's signing keys and the rules a token must meet.
#[derive(Debug)]
pub struct Verifier {
    cfg: KubernetesAuth,
    keys: RwLock<JwkSet>,
}

impl Verifier {
    pub fn new(cfg: KubernetesAuth) -> Arc<Verifier> {
        Arc::new(Verifier { cfg, keys: RwLock::new(JwkSet { keys: vec![] }) })
    }

    /// Fetch the JWKS (with the cluster CA and, if set, the scheduler's own
    /// token). An error names the URL and the answer.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let c = &self.cfg;
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &c.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("kubernetes.ca_cert {}: {e}", ca.display()))?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let mut req = client.build()?.get(&c.jwks_url);
        if let Some(path) = &c.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("kubernetes.token_file {}: {e}", path.display()))?;
            req = req.bearer_auth(token.trim());
        }
        let resp = req.send().await.map_err(|e| anyhow::anyhow!("GET {}: {e}", c.jwks_url))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("GET {}: {status}", c.jwks_url);
        }
        let set: JwkSet = resp.json().await.map_err(|e| anyhow::anyhow!("GET {}: not a JWKS: {e}", c.jwks_url))?;
        let n = set.keys.len();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(n)
    }

    /// The node a token proves, or why it proves nothing.
    pub fn node_of(&self, token: &str) -> Result<String, Status> {
        let bad = |why: String| Status::unauthenticated(format!("Kubernetes service-account token refused: {why}"));
        let header = decode_header(token).map_err(|e| bad(format!("not a JWT ({e})")))?;
        let key = {
            let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let jwk = match &header.kid {
                Some(kid) => keys.find(kid),
                None => keys.keys.first(),
            };
            let jwk = jwk.ok_or_else(|| {
                bad(format!(
                    "signing key {:?} is not in the cluster's JWKS (fetched every {} s)",
                    header.kid,
                    REFRESH.as_secs()
                ))
            })?;
            DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("the cluster's key: {e}")))?
        };
        let mut v = Validation::new(header.alg);
        v.set_audience(&[&self.cfg.audience]);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = decode::<Claims>(token, &key, &v).map_err(|e| bad(e.to_string()))?.claims;
        if claims.sub != self.cfg.service_account {
            return Err(bad(format!("service account {} is not {}", claims.sub, self.cfg.service_account)));
        }
        let k = claims.kubernetes.ok_or_else(|| bad("no kubernetes.io claims".into()))?;
        match (k.node, k.pod) {
            (Some(node), Some(_)) => Ok(node.name),
            _ => Err(bad("the token names no pod and node (Kubernetes 1.30+ binds projected tokens to both)".into())),
        }
    }
}
