//! Leader election among replicas on one PostgreSQL store: a lease row and an
//! epoch (the fencing token), no advisory locks.
//!
//! - A candidate takes the lease only once it has ended (the database's clock
//!   decides), by incrementing the epoch; the leader renews it every `retry`.
//! - Every commit of the leader is fenced by its epoch (`store::postgres`), so a
//!   deposed leader (paused past its lease, cut off) can never commit; its
//!   first failed commit or renewal stops it (exit 70) and it comes back as a
//!   follower.
//! - A leader that cannot renew for `renew_deadline` steps down before its
//!   lease ends. On SIGTERM it resigns (ends the lease at once) and notifies
//!   the followers (`LISTEN greenfill_lease`), who try at once.

use crate::store::StoreError;
use crate::store::postgres::{redact, tls_config};
use futures_util::StreamExt;
use greenfill_runtime::CancellationToken;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Mutex, Notify, watch};

/// Who holds the lease, as last read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    pub epoch: i64,
    pub holder: String,
    /// Where clients reach it.
    pub address: String,
    /// Whether the lease has not ended.
    pub live: bool,
}

/// A replica's handle on the lease.
#[derive(Debug)]
pub struct Lease {
    url: String,
    target: String,
    /// This replica's id (a fresh one per process).
    pub me: String,
    address: String,
    cfg: super::config::Replication,
    client: Mutex<Option<tokio_postgres::Client>>,
    /// Woken by NOTIFY greenfill_lease (a resignation).
    woken: Arc<Notify>,
    /// The holder as last read (followers answer with its address).
    pub seen: watch::Sender<Holder>,
}

const CHANNEL: &str = "greenfill_lease";

impl Lease {
    pub fn new(url: &str, address: String, cfg: super::config::Replication) -> Arc<Lease> {
        Arc::new(Lease {
            url: url.to_owned(),
            target: redact(url),
            me: uuid::Uuid::now_v7().to_string(),
            address,
            cfg,
            client: Mutex::new(None),
            woken: Arc::new(Notify::new()),
            seen: watch::channel(Holder::default()).0,
        })
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |source| StoreError::Postgres { target: self.target.clone(), source }
    }

    /// The connection, made again if it was lost (the database restarted).
    async fn client(&self) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *slot = Some(self.listen().await?);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| c.as_mut().expect("set above")))
    }

    /// A session that LISTENs for resignations. Statements wait for a lock at
    /// most `retry` (a frozen leader's open transaction must not stall us).
    async fn listen(&self) -> Result<tokio_postgres::Client, StoreError> {
        let ms = self.cfg.retry.as_millis().max(100);
        let options = format!("-c lock_timeout={ms} -c statement_timeout={}", ms * 2);
        let target = self.target.clone();
        let mut cfg: tokio_postgres::Config =
            self.url.parse().map_err(|source| StoreError::Postgres { target: target.clone(), source })?;
        cfg.connect_timeout(self.cfg.connect_timeout).options(&options).application_name("greenfill-lease");
        // Notifications arrive on the connection; it is polled here.
        let connecting = async {
            if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                Ok::<_, tokio_postgres::Error>((c, Box::pin(conn) as std::pin::Pin<Box<dyn ConnFuture>>))
            } else {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config());
                let (c, conn) = cfg.connect(tls).await?;
                Ok((c, Box::pin(conn) as std::pin::Pin<Box<dyn ConnFuture>>))
            }
        };
        let (client, mut conn) = tokio::time::timeout(self.cfg.connect_timeout, connecting)
            .await
            .map_err(|_| StoreError::Unreachable { target: target.clone(), after: self.cfg.connect_timeout })?
            .map_err(self.err())?;
        let woken = self.woken.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.as_mut().poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => woken.notify_waiters(),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(self.err())?;
        Ok(client)
    }

    /// Read who holds the lease.
    pub async fn read(&self) -> Result<Holder, StoreError> {
        let c = self.client().await?;
        let r = c
            .query_one("SELECT epoch, holder, address, expires_at > clock_timestamp() FROM greenfill_lease", &[])
            .await
            .map_err(self.err())?;
        let h = Holder {
            epoch: r.try_get(0).map_err(self.err())?,
            holder: r.try_get(1).map_err(self.err())?,
            address: r.try_get(2).map_err(self.err())?,
            live: r.try_get(3).map_err(self.err())?,
        };
        drop(c);
        self.seen.send_replace(h.clone());
        Ok(h)
    }

    fn ttl_ms(&self) -> f64 {
        self.cfg.lease.as_secs_f64() * 1000.0
    }

    /// Take the lease if it has ended: `Some(new epoch)`.
    pub async fn try_take(&self) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "UPDATE greenfill_lease SET epoch = epoch + 1, holder = $1, address = $2,
                     expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                 WHERE id = 1 AND expires_at <= clock_timestamp() RETURNING epoch",
                &[&self.me, &self.address, &self.ttl_ms()],
            )
            .await
            .map_err(self.err())?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Renew: `false` if the epoch moved (deposed).
    pub async fn renew(&self, epoch: i64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE greenfill_lease SET expires_at = clock_timestamp() + $2 * interval '1 millisecond'
                 WHERE id = 1 AND epoch = $1 AND holder = $3",
                &[&epoch, &self.ttl_ms(), &self.me],
            )
            .await
            .map_err(self.err())?;
        Ok(n == 1)
    }

    /// End our lease now and wake the followers.
    pub async fn resign(&self, epoch: i64) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.batch_execute("BEGIN").await.map_err(self.err())?;
        let n = c
            .execute(
                "UPDATE greenfill_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1 AND holder = $2",
                &[&epoch, &self.me],
            )
            .await
            .map_err(self.err())?;
        c.batch_execute(&format!("NOTIFY {CHANNEL}; COMMIT")).await.map_err(self.err())?;
        if n == 1 {
            tracing::info!(epoch, "resigned the lease");
        }
        Ok(())
    }

    /// Wait until this replica holds the lease (`None`: stopped first). Tries
    /// every `retry`, and at once when a leader resigns.
    pub async fn acquire(&self, stop: &CancellationToken) -> Option<i64> {
        let mut logged = String::new();
        loop {
            let woken = self.woken.notified();
            match self.try_take().await {
                Ok(Some(epoch)) => {
                    let _ = self.read().await;
                    return Some(epoch);
                }
                Ok(None) => match self.read().await {
                    Ok(h) if h.holder != logged => {
                        tracing::info!(leader = %h.address, epoch = h.epoch, "following");
                        logged = h.holder;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the lease"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot try the lease; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.cfg.retry) => {}
                () = woken => {}
                () = stop.cancelled() => return None,
            }
        }
    }

    /// While leading: renew every `retry`. Returns why leadership ended
    /// (deposed, or no renewal within `renew_deadline`), or `None` on `stop`.
    pub async fn keep(&self, epoch: i64, stop: &CancellationToken) -> Option<String> {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.retry) => {}
                () = stop.cancelled() => return None,
            }
            let attempt = tokio::time::timeout(self.cfg.retry, self.renew(epoch)).await;
            match attempt {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => return Some(format!("deposed: the lease's epoch moved past {epoch}")),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the lease"),
                Err(_) => tracing::warn!(timeout = ?self.cfg.retry, "renewing the lease timed out"),
            }
            if renewed.elapsed() >= self.cfg.renew_deadline {
                return Some(format!("could not renew the lease for {:?}; stepping down", renewed.elapsed()));
            }
        }
    }
}

/// The connection future of a plain session (polled for notifications).
trait ConnFuture: Send {
    fn poll_message(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> ConnFuture for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll_message(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        tokio_postgres::Connection::poll_message(self.get_mut(), cx)
    }
}
