//! Pulling an image into containerd, as containerd's own Go client does: the
//! registry's manifest (an index resolved to this node's platform), config and
//! layers into the content store under a lease, with the labels that keep them
//! from the garbage collector once the image record holds them, then each layer
//! unpacked onto its parent's snapshot, named by its chain id.

use crate::containerd::{Containerd, ImageConfig, ImageError, ImageRef};
use containerd_client::types::Descriptor;
use futures_util::StreamExt;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use std::collections::HashMap;

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const SNAPSHOT_GC_LABEL: &str = "containerd.io/gc.ref.snapshot.overlayfs";

/// This node's platform as OCI names it.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An error and its causes on one line: the registry's answer is in the causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cause = c.source();
    }
    s
}

/// The registry's answer, said plainly (with its HTTP status where the client
/// keeps only a variant for it); a transport failure or a 5xx may pass.
fn registry_error(image: &str, what: &str, e: &oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    let message = match e {
        E::UnauthorizedError { url } => {
            format!("registry answered 401 Unauthorized (no credential, or the wrong one, for this registry) at {url}")
        }
        E::AuthenticationFailure(m) => format!("registry refused the login (401): {m}"),
        other => format!("{what}: {}", chain(other)),
    };
    let image = image.to_owned();
    match e {
        E::RequestError(_) | E::IoError(_) => ImageError::Unreachable { image, message },
        E::ServerError { code, .. } if *code >= 500 => ImageError::Unreachable { image, message },
        _ => ImageError::Image { image, message },
    }
}

/// The chain id of a layer on `parent` (OCI image spec: sha256 of "parent diff").
pub(crate) fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    use sha2::Digest;
    match parent {
        None => diff_id.to_owned(),
        Some(p) => format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{p} {diff_id}")))),
    }
}

/// The parts of an image config a container needs; the chain id from its diff ids.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("image config: {e}"))?;
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let diff_ids = strings(&v["rootfs"]["diff_ids"]);
    if diff_ids.is_empty() {
        return Err("image config has no rootfs.diff_ids (no layers)".into());
    }
    let mut top: Option<String> = None;
    for d in &diff_ids {
        top = Some(chain_id(top.as_deref(), d));
    }
    let c = &v["config"];
    Ok(ImageConfig {
        chain_id: top.unwrap_or_default(),
        diff_ids,
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
    })
}

fn descriptor(d: &OciDescriptor) -> Descriptor {
    Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, ..Default::default() }
}

fn whole(bytes: Vec<u8>) -> futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>> {
    futures_util::stream::once(async move { Ok(bytes::Bytes::from(bytes)) }).boxed()
}

/// The manifest for this platform, as raw bytes and its digest.
async fn manifest(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    auth: &oci_client::secrets::RegistryAuth,
    name: &str,
    err: &impl Fn(String) -> ImageError,
) -> Result<(Vec<u8>, String), ImageError> {
    let types: Vec<&str> = INDEX_TYPES
        .iter()
        .copied()
        .chain(["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"])
        .collect();
    let (body, digest) =
        client.pull_manifest_raw(reference, auth, &types).await.map_err(|e| registry_error(name, "registry", &e))?;
    let media: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(format!("manifest: {e}")))?;
    let is_index =
        media["mediaType"].as_str().is_some_and(|t| INDEX_TYPES.contains(&t)) || media.get("manifests").is_some();
    if !is_index {
        return Ok((body, digest));
    }
    let index: OciImageIndex = serde_json::from_slice(&body).map_err(|e| err(format!("image index: {e}")))?;
    let entry = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch()))
        .ok_or_else(|| err(format!("no manifest for linux/{} in the image index", arch())))?;
    let by_digest = reference.clone_with_digest(entry.digest.clone());
    client.pull_manifest_raw(&by_digest, auth, &types).await.map_err(|e| registry_error(name, "registry", &e))
}

/// Pull `image` into containerd and unpack it; its run config.
pub(crate) async fn pull(ctd: &Containerd, image: &ImageRef) -> Result<ImageConfig, ImageError> {
    let err = |message: String| ImageError::Image { image: image.reference.clone(), message };
    let reference: oci_client::Reference =
        image.reference.parse().map_err(|e: oci_client::ParseError| err(format!("not an OCI reference: {e}")))?;
    let auth = match &image.credential {
        Some(name) => ctd.credential(&image.reference, name)?,
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(ctd.insecure().to_vec()),
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    let (body, digest) = manifest(&client, &reference, &auth, &image.reference, &err).await?;
    let m: OciImageManifest = serde_json::from_slice(&body).map_err(|e| err(format!("manifest: {e}")))?;
    let lease = ctd.lease("pull").await?;
    // The registry's token (or basic credential) is kept by the client for the blobs.
    let result = fetch_and_unpack(ctd, &client, &reference, (&body, &digest), &m, &lease).await;
    ctd.end_lease(&lease).await;
    result
}

async fn fetch_and_unpack(
    ctd: &Containerd,
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    (body, digest): (&[u8], &str),
    m: &OciImageManifest,
    lease: &str,
) -> Result<ImageConfig, ImageError> {
    let name = reference.whole();
    let err = |message: String| ImageError::Image { image: name.clone(), message };
    let mut config_bytes = Vec::new();
    client
        .pull_blob(reference, &m.config, &mut config_bytes)
        .await
        .map_err(|e| registry_error(&name, "config blob", &e))?;
    let config = parse_config(&config_bytes).map_err(&err)?;
    let diff_ids = &config.diff_ids;
    if diff_ids.len() != m.layers.len() {
        return Err(err(format!("{} layers but {} diff ids in the config", m.layers.len(), diff_ids.len())));
    }
    let total: i64 = m.layers.iter().map(|l| l.size).sum();
    let mut done = 0i64;
    for (i, layer) in m.layers.iter().enumerate() {
        if !ctd.has_blob(&layer.digest).await? {
            let stream = client
                .pull_blob_stream(reference, layer)
                .await
                .map_err(|e| registry_error(&name, &format!("layer {}", layer.digest), &e))?
                .stream
                .map(|r| r.map_err(|e| e.to_string()))
                .boxed();
            ctd.write_blob(&descriptor(layer), stream, HashMap::new(), lease).await?;
        }
        done += layer.size;
        tracing::info!(image = %name, layer = i + 1, of = m.layers.len(), bytes = done, total, "image pull");
    }
    let mut config_labels = HashMap::new();
    config_labels.insert(SNAPSHOT_GC_LABEL.to_owned(), config.chain_id.clone());
    ctd.write_blob(&descriptor(&m.config), whole(config_bytes.clone()), config_labels, lease).await?;
    let mut manifest_labels =
        HashMap::from([("containerd.io/gc.ref.content.config".to_owned(), m.config.digest.clone())]);
    for (i, l) in m.layers.iter().enumerate() {
        manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let media = m.media_type.clone().unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let target = Descriptor { media_type: media, digest: digest.to_owned(), size, ..Default::default() };
    ctd.write_blob(&target, whole(body.to_vec()), manifest_labels, lease).await?;
    let mut parent: Option<String> = None;
    for (layer, diff_id) in m.layers.iter().zip(diff_ids) {
        let id = chain_id(parent.as_deref(), diff_id);
        ctd.unpack_layer(&descriptor(layer), parent.as_deref().unwrap_or_default(), &id, lease).await?;
        parent = Some(id);
    }
    ctd.put_image(&name, target, lease).await?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_layers_is_refused_by_name() {
        let e = parse_config(br#"{"config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap_err();
        assert!(e.contains("rootfs.diff_ids"), "{e}");
        let c = parse_config(
            br#"{"config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.chain_id.as_str(), c.cmd, c.env, c.working_dir.as_str()),
            ("sha256:aa", vec!["/bin/sh".to_owned()], vec!["PATH=/bin".to_owned()], "/w")
        );
    }
}
