//! Image jobs through the node's containerd, the way kubelet uses it, over its
//! gRPC socket, in a namespace of greenfill's own (`greenfill`, never kubelet's
//! `k8s.io`).
//!
//! - **Pull** ([`Containerd::ensure_image`]): containerd 1.6 pulls only through
//!   CRI (and into `k8s.io`), so the agent pulls as every containerd client does:
//!   the manifest and blobs from the registry (`oci-client`: token and basic
//!   auth), written into containerd's content store under a lease, with the
//!   garbage-collection labels the Go client writes, then unpacked layer by
//!   layer into snapshots (`Diff.Apply`) named by their chain ids.
//! - **Run** ([`Containerd::start`]): a snapshot of the image, a container
//!   whose `linux.cgroupsPath` is the job cgroup the runner made (its limits, the
//!   guard's cuts on the batch root above it), and a task whose stdout and stderr
//!   go to the agent's own size-capping logger (containerd's `binary://` logging
//!   protocol, [`log_main`]), a child of containerd's shim, so logs outlive an
//!   agent restart as the job does.
//! - **End** ([`Containerd::wait`], [`Containerd::remove`]): the task's exit
//!   status, then the task, the container and its snapshot are deleted.
//! - **Found again** by label after an agent restart ([`Containerd::jobs`]).

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::{self, Request};
use containerd_client::types::{Descriptor, Mount};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a node's containerd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// greenfill's containerd namespace.
pub const NAMESPACE: &str = "greenfill";
const SNAPSHOTTER: &str = "overlayfs";
const RUNTIME: &str = "io.containerd.runc.v2";
/// Labels every job container carries: its attempt and the batch root of the
/// agent that owns it (two agents on one host never take each other's).
pub const LABEL_ATTEMPT: &str = "greenfill.attempt";
pub const LABEL_ROOT: &str = "greenfill.batch-root";

/// How an image job asks for its image (the API's `ImageSpec`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    pub reference: String,
    pub pull: Pull,
    /// A credential file name in the agent's credentials directory.
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pull {
    IfNotPresent,
    Always,
    Never,
}

/// Why an image job could not start; every message names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("containerd at {socket}: {message}")]
    Containerd { socket: String, message: String },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    /// A cause that may pass: the registry unreachable or answering 5xx,
    /// containerd down.
    #[error("image {image}: {message}")]
    Unreachable { image: String, message: String },
}

impl ImageError {
    /// Whether trying again later may succeed.
    pub fn transient(&self) -> bool {
        matches!(self, ImageError::Containerd { .. } | ImageError::Unreachable { .. })
    }
}

/// What the image says about running it.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// The chain id of the top layer: the snapshot a container starts from.
    pub chain_id: String,
    /// Each layer's uncompressed digest, bottom first (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

/// How an image job's start went: the pid, and how long the pull took when
/// there was one.
#[derive(Debug, Clone)]
pub struct Started {
    pub pid: u32,
    pub pulled: Option<Duration>,
}

/// What the container runs: the OCI process, already decided by the runner.
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: String,
    pub image: ImageRef,
    pub argv: Vec<String>,
    pub shell: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    /// The job cgroup, relative to each hierarchy's root.
    pub cgroup: PathBuf,
    pub log_dir: PathBuf,
    pub log_cap_bytes: u64,
}

/// A job container found in containerd.
#[derive(Debug, Clone)]
pub struct Found {
    pub attempt: String,
    /// The task's pid, if it has a task still (running or exited).
    pub pid: Option<u32>,
}

/// A client of one containerd, for one agent (one batch root).
#[derive(Debug, Clone)]
pub struct Containerd {
    socket: PathBuf,
    /// The agent binary containerd's shim starts as the jobs' logger.
    logger: PathBuf,
    /// Registry credential files (`<name>`: `user:password`), never logged.
    credentials: Option<PathBuf>,
    /// Registries spoken to over plain HTTP (loopback test registries).
    insecure: Vec<String>,
    batch_root: String,
    channel: tonic::transport::Channel,
}

/// A status with its causes (a transport error's is where the socket's answer is).
fn status_msg(s: &tonic::Status) -> String {
    let mut m = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_owned() };
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !m.contains(&text) {
            m = format!("{m}: {text}");
        }
        cause = c.source();
    }
    m
}

impl Containerd {
    /// Connect (lazily: a containerd that is down fails the first job, naming the socket).
    pub fn new(
        socket: PathBuf,
        logger: PathBuf,
        credentials: Option<PathBuf>,
        insecure: Vec<String>,
        batch_root: &Path,
    ) -> Result<Containerd, ImageError> {
        let path = socket.clone();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .map_err(|e| ImageError::Containerd { socket: socket.display().to_string(), message: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower_service(path));
        Ok(Containerd { socket, logger, credentials, insecure, batch_root: batch_root.display().to_string(), channel })
    }

    fn down(&self, s: &tonic::Status) -> ImageError {
        ImageError::Containerd { socket: self.socket.display().to_string(), message: status_msg(s) }
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(NAMESPACE));
        if let Some(l) = lease.and_then(|l| l.parse().ok()) {
            r.metadata_mut().insert("containerd-lease", l);
        }
        r
    }

    fn content(&self) -> api::content_client::ContentClient<tonic::transport::Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<tonic::transport::Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }

    fn tasks(&self) -> api::tasks_client::TasksClient<tonic::transport::Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }

    fn containers(&self) -> api::containers_client::ContainersClient<tonic::transport::Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone())
    }

    /// The image, pulled if the policy says so; its run config and how long a
    /// pull took (`None`: it was present).
    pub async fn ensure_image(&self, image: &ImageRef) -> Result<(ImageConfig, Option<Duration>), ImageError> {
        let present = self.local_config(&image.reference).await?;
        match (image.pull, present) {
            (Pull::IfNotPresent | Pull::Never, Some(c)) => Ok((c, None)),
            (Pull::Never, None) => Err(ImageError::Image {
                image: image.reference.clone(),
                message: "not on this node, and the pull policy is never".into(),
            }),
            (Pull::Always | Pull::IfNotPresent, _) => {
                let t = std::time::Instant::now();
                let c = crate::pull::pull(self, image).await?;
                Ok((c, Some(t.elapsed())))
            }
        }
    }

    /// The image's config from containerd's store, if the image is there and unpacked.
    async fn local_config(&self, reference: &str) -> Result<Option<ImageConfig>, ImageError> {
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        let got = images.get(self.req(api::GetImageRequest { name: reference.to_owned() }, None)).await;
        let target = match got {
            Ok(r) => r.into_inner().image.and_then(|i| i.target),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(self.down(&s)),
        };
        let Some(target) = target else { return Ok(None) };
        let image_err = |message: String| ImageError::Image { image: reference.to_owned(), message };
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&target.digest).await?).map_err(|e| image_err(e.to_string()))?;
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_owned();
        let config = crate::pull::parse_config(&self.read_blob(&config_digest).await?).map_err(image_err)?;
        let unpacked =
            self.snapshots()
                .stat(self.req(
                    snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: config.chain_id.clone() },
                    None,
                ))
                .await
                .is_ok();
        Ok(unpacked.then_some(config))
    }

    /// A whole blob of the content store.
    pub(crate) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        use futures_util::StreamExt;
        let mut stream = self
            .content()
            .read(self.req(api::ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 }, None))
            .await
            .map_err(|s| self.down(&s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(part) = stream.next().await {
            out.extend_from_slice(&part.map_err(|s| self.down(&s))?.data);
        }
        Ok(out)
    }

    /// Whether the content store has `digest`.
    pub(crate) async fn has_blob(&self, digest: &str) -> Result<bool, ImageError> {
        match self.content().info(self.req(api::InfoRequest { digest: digest.to_owned() }, None)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(self.down(&s)),
        }
    }

    /// Write one blob (already fetched whole, or streamed by `chunks`) under `lease`.
    pub(crate) async fn write_blob(
        &self,
        desc: &Descriptor,
        chunks: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), ImageError> {
        use futures_util::StreamExt;
        let reference = format!("greenfill-{}-{:x}", desc.digest, rand::random::<u64>());
        let (total, expected) = (desc.size, desc.digest.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let mut content = self.content();
        let write = content.write(self.req(tokio_stream::wrappers::ReceiverStream::new(rx), Some(lease)));
        let feed = {
            let reference = reference.clone();
            async move {
                let mut offset = 0i64;
                let mut chunks = chunks;
                while let Some(chunk) = chunks.next().await {
                    let data = chunk?;
                    let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
                    let msg = api::WriteContentRequest {
                        action: api::WriteAction::Write as i32,
                        r#ref: reference.clone(),
                        total,
                        offset,
                        data: data.to_vec(),
                        ..Default::default()
                    };
                    offset += len;
                    tx.send(msg).await.map_err(|_| "containerd closed the write".to_owned())?;
                }
                let commit = api::WriteContentRequest {
                    action: api::WriteAction::Commit as i32,
                    r#ref: reference,
                    total,
                    offset,
                    expected,
                    labels,
                    ..Default::default()
                };
                tx.send(commit).await.map_err(|_| "containerd closed the write".to_owned())
            }
        };
        let (fed, answers) = tokio::join!(feed, async {
            let mut responses = write.await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        });
        match (fed, answers) {
            (_, Err(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            (_, Err(s)) => Err(self.down(&s)),
            (Err(message), Ok(())) => Err(ImageError::Image { image: desc.digest.clone(), message }),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Set an image record to `target` (create or update).
    pub(crate) async fn put_image(&self, name: &str, target: Descriptor, lease: &str) -> Result<(), ImageError> {
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        let image = api::Image { name: name.to_owned(), target: Some(target), ..Default::default() };
        let created = images
            .create(self.req(api::CreateImageRequest { image: Some(image.clone()), ..Default::default() }, Some(lease)))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => images
                .update(self.req(api::UpdateImageRequest { image: Some(image), ..Default::default() }, Some(lease)))
                .await
                .map(|_| ())
                .map_err(|s| self.down(&s)),
            Err(s) => Err(self.down(&s)),
        }
    }

    /// Unpack one layer onto `parent`'s snapshot as `chain_id` (skipped if there).
    pub(crate) async fn unpack_layer(
        &self,
        layer: &Descriptor,
        parent: &str,
        chain_id: &str,
        lease: &str,
    ) -> Result<(), ImageError> {
        let mut snaps = self.snapshots();
        let stat = snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain_id.to_owned() };
        if snaps.stat(self.req(stat, Some(lease))).await.is_ok() {
            return Ok(());
        }
        let key = format!("extract-{:x} {chain_id}", rand::random::<u64>());
        let prepare = snap::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: parent.to_owned(),
            ..Default::default()
        };
        let mounts =
            snaps.prepare(self.req(prepare, Some(lease))).await.map_err(|s| self.down(&s))?.into_inner().mounts;
        let mut diff = api::diff_client::DiffClient::new(self.channel.clone());
        let applied = diff
            .apply(self.req(api::ApplyRequest { diff: Some(layer.clone()), mounts, ..Default::default() }, Some(lease)))
            .await;
        if let Err(s) = applied {
            let _ = snaps
                .remove(self.req(snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key }, Some(lease)))
                .await;
            return Err(self.down(&s));
        }
        let extract = key.clone();
        let commit = snap::CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: chain_id.to_owned(),
            key,
            ..Default::default()
        };
        match snaps.commit(self.req(commit, Some(lease))).await {
            Ok(_) => Ok(()),
            // Another job's pull unpacked the same layer first: drop ours.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let remove = snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: extract };
                let _ = snaps.remove(self.req(remove, Some(lease))).await;
                Ok(())
            }
            Err(s) => Err(self.down(&s)),
        }
    }

    /// A lease that keeps what a pull or a start makes (content, snapshots) from
    /// the garbage collector until a record holds it — the image, the container
    /// (an hour at most, if the agent dies meanwhile).
    pub(crate) async fn lease(&self, what: &str) -> Result<String, ImageError> {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let expire = chrono::Utc::now() + chrono::Duration::hours(1);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire.to_rfc3339())]);
        let id = format!("greenfill-{what}-{:x}", rand::random::<u64>());
        leases
            .create(self.req(api::CreateRequest { id: id.clone(), labels }, None))
            .await
            .map_err(|s| self.down(&s))?;
        Ok(id)
    }

    pub(crate) async fn end_lease(&self, id: &str) {
        let mut leases = api::leases_client::LeasesClient::new(self.channel.clone());
        let _ = leases.delete(self.req(api::DeleteRequest { id: id.to_owned(), sync: false }, None)).await;
    }

    /// The credential named `name`, as `user:password` in its file.
    pub(crate) fn credential(&self, image: &str, name: &str) -> Result<oci_client::secrets::RegistryAuth, ImageError> {
        let err = |message: String| ImageError::Image { image: image.to_owned(), message };
        let dir = self.credentials.as_ref().ok_or_else(|| {
            err(format!(
                "registry credential {name:?} asked for, but the agent has no --registry-credentials directory"
            ))
        })?;
        let text = std::fs::read_to_string(dir.join(name))
            .map_err(|e| err(format!("registry credential {name:?} in {}: {e}", dir.display())))?;
        let (user, password) = text
            .trim_end_matches(['\n', '\r'])
            .split_once(':')
            .ok_or_else(|| err(format!("registry credential {name:?}: the file must hold user:password")))?;
        Ok(oci_client::secrets::RegistryAuth::Basic(user.to_owned(), password.to_owned()))
    }

    pub(crate) fn insecure(&self) -> &[String] {
        &self.insecure
    }

    /// Pull (by policy), create the container in the job's cgroup, start its task.
    pub async fn start(&self, job: &Launch) -> Result<Started, ImageError> {
        let (config, pulled) = self.ensure_image(&job.image).await?;
        let spec = crate::oci::runtime_spec(job, &config);
        let image_err = |message: String| ImageError::Image { image: job.image.reference.clone(), message };
        self.remove(&job.id).await;
        // The rootfs snapshot belongs to no record until its container exists:
        // without a lease, a collection between the two (another job's container
        // removed, a pull's lease ended) took it, and the task failed to mount
        // it ("no such file or directory"; CI, twice, under load).
        let lease = self.lease("start").await?;
        let created = self.create_container(job, &config, spec, &lease).await;
        self.end_lease(&lease).await;
        let rootfs = match created {
            Ok(rootfs) => rootfs,
            Err(e) => {
                self.remove(&job.id).await;
                return Err(e);
            }
        };
        let logger = format!(
            "binary://{}?greenfill-log={}",
            self.logger.display(),
            url_escape(&format!("{},{}", job.log_cap_bytes, job.log_dir.display()))
        );
        let task = api::CreateTaskRequest {
            container_id: job.id.to_owned(),
            rootfs,
            stdout: logger.clone(),
            stderr: logger,
            ..Default::default()
        };
        let started = async {
            let pid = self.tasks().create(self.req(task, None)).await?.into_inner().pid;
            self.tasks()
                .start(self.req(api::StartRequest { container_id: job.id.to_owned(), exec_id: String::new() }, None))
                .await?;
            Ok::<u32, tonic::Status>(pid)
        }
        .await;
        match started {
            Ok(pid) => Ok(Started { pid, pulled }),
            Err(s) => {
                self.remove(&job.id).await;
                Err(image_err(format!("the container did not start: {}", status_msg(&s))))
            }
        }
    }

    /// The job's rootfs snapshot and its container, under `lease`; the mounts.
    async fn create_container(
        &self,
        job: &Launch,
        config: &ImageConfig,
        spec: serde_json::Value,
        lease: &str,
    ) -> Result<Vec<Mount>, ImageError> {
        let image_err = |message: String| ImageError::Image { image: job.image.reference.clone(), message };
        let prepare = snap::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: job.id.clone(),
            parent: config.chain_id.clone(),
            ..Default::default()
        };
        let rootfs: Vec<Mount> = self
            .snapshots()
            .prepare(self.req(prepare, Some(lease)))
            .await
            .map_err(|s| self.down(&s))?
            .into_inner()
            .mounts;
        let container = api::Container {
            id: job.id.to_owned(),
            labels: HashMap::from([
                (LABEL_ATTEMPT.to_owned(), job.id.to_owned()),
                (LABEL_ROOT.to_owned(), self.batch_root.clone()),
            ]),
            image: job.image.reference.clone(),
            runtime: Some(api::container::Runtime { name: RUNTIME.into(), options: None }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&spec).map_err(|e| image_err(e.to_string()))?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: job.id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.req(api::CreateContainerRequest { container: Some(container) }, Some(lease)))
            .await
            .map_err(|s| self.down(&s))?;
        Ok(rootfs)
    }

    /// Wait for the task to end: its exit status (containerd's: 128 + n for signal n).
    pub async fn wait(&self, id: &str) -> Result<u32, ImageError> {
        let wait = api::WaitRequest { container_id: id.to_owned(), exec_id: String::new() };
        loop {
            match self.tasks().wait(self.req(wait.clone(), None)).await {
                Ok(r) => return Ok(r.into_inner().exit_status),
                // containerd restarted under us, or the socket blinked: ask again.
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(s) => return Err(self.down(&s)),
            }
        }
    }

    /// Delete the task, the container and its snapshot; whatever of them exists.
    pub async fn remove(&self, id: &str) {
        let kill = api::KillRequest { container_id: id.to_owned(), signal: 9, all: true, ..Default::default() };
        if self.tasks().kill(self.req(kill, None)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait(id)).await;
        }
        let _ = self.tasks().delete(self.req(api::DeleteTaskRequest { container_id: id.to_owned() }, None)).await;
        let _ = self.containers().delete(self.req(api::DeleteContainerRequest { id: id.to_owned() }, None)).await;
        let remove = snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.to_owned() };
        let _ = self.snapshots().remove(self.req(remove, None)).await;
    }

    /// Images in greenfill's namespace (what this node can start without a pull).
    pub async fn images(&self) -> Result<Vec<String>, ImageError> {
        let mut images = api::images_client::ImagesClient::new(self.channel.clone());
        let list = images
            .list(self.req(api::ListImagesRequest { filters: Vec::new() }, None))
            .await
            .map_err(|s| self.down(&s))?;
        Ok(list.into_inner().images.into_iter().map(|i| i.name).collect())
    }

    /// This agent's job containers (by label), with their task pids.
    pub async fn jobs(&self) -> Result<Vec<Found>, ImageError> {
        let filter = format!("labels.\"{LABEL_ROOT}\"=={}", self.batch_root);
        let list = self
            .containers()
            .list(self.req(api::ListContainersRequest { filters: vec![filter] }, None))
            .await
            .map_err(|s| self.down(&s))?
            .into_inner()
            .containers;
        let mut found = Vec::new();
        for c in list {
            let Some(attempt) = c.labels.get(LABEL_ATTEMPT).cloned() else { continue };
            let get = api::GetRequest { container_id: c.id.clone(), exec_id: String::new() };
            let pid =
                self.tasks().get(self.req(get, None)).await.ok().and_then(|r| r.into_inner().process).map(|p| p.pid);
            found.push(Found { attempt, pid });
        }
        Ok(found)
    }
}

fn tower_service(
    path: PathBuf,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    })
}

/// Percent-encode a query value (containerd parses the logger URI with Go's url package).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The job logger (`greenfill-agent greenfill-log <cap>,<dir>`), started by
/// containerd's shim per containerd's logging-binary protocol: the job's stdout
/// on fd 3, its stderr on fd 4, and fd 5 to close once ready. It writes
/// `<dir>/<CONTAINER_ID>.{out,err}`, at most `cap` bytes each, and reads the rest
/// to the end so the job never blocks. SIGTERM (the shim's "flush and exit") is
/// held until both streams end, so nothing the job wrote is lost.
pub fn log_main(arg: &str) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    let Some((cap, dir)) = arg.split_once(',') else {
        eprintln!("greenfill-log: want <cap>,<dir>, got {arg:?}");
        return 2;
    };
    let (Ok(cap), Ok(id)) = (cap.parse::<u64>(), std::env::var("CONTAINER_ID")) else {
        eprintln!("greenfill-log: a byte cap and CONTAINER_ID are needed");
        return 2;
    };
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let _ = term.thread_block();
    // The fds are the shim's pipes; opening them through /proc keeps this safe Rust.
    let open = |fd: u32| std::fs::OpenOptions::new().read(true).write(fd == 5).open(format!("/proc/self/fd/{fd}"));
    let dir = PathBuf::from(dir);
    let mut threads = Vec::new();
    for (fd, ext) in [(3, "out"), (4, "err")] {
        let (Ok(from), Ok(to)) = (open(fd), std::fs::File::create(dir.join(format!("{id}.{ext}")))) else {
            eprintln!("greenfill-log: cannot open fd {fd} or {}/{id}.{ext}", dir.display());
            return 1;
        };
        threads.push(std::thread::spawn(move || crate::runner::copy_capped(from, to, cap)));
    }
    if let Ok(mut ready) = open(5) {
        use std::io::Write;
        let _ = ready.write_all(b"r");
    }
    for t in threads {
        let _ = t.join();
    }
    0
}
