//! TLS (rustls) configured in the config file: a client that trusts the
//! certificate talks; a plaintext client does not.

use greenfill_proto::v1 as pb;
use greenfill_scheduler::service::{self, Config, config::Tls};
use pb::job_service_client::JobServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test]
async fn tls_serves_trusting_clients_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (key.cert.pem(), key.signing_key.serialize_pem());
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("db"),
        user_tokens: vec!["u".into()],
        agent_tokens: vec!["a".into()],
        tls: Some(Tls { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") }),
        ..Config::default()
    };
    c.validate("test").unwrap();
    let srv = service::start(c).await.unwrap();

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert_pem)).domain_name("localhost");
    let ch = Endpoint::from_shared(format!("https://{}", srv.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut jobs = JobServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::ListJobsRequest::default());
    req.metadata_mut().insert("authorization", "Bearer u".parse().unwrap());
    assert!(jobs.list_jobs(req).await.is_ok());

    // Plaintext HTTP/2 to a TLS port: the connection or the call fails.
    let plain = match Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await {
        Ok(ch) => {
            let mut req = tonic::Request::new(pb::ListJobsRequest::default());
            req.metadata_mut().insert("authorization", "Bearer u".parse().unwrap());
            JobServiceClient::new(ch).list_jobs(req).await.is_ok()
        }
        Err(_) => false,
    };
    assert!(!plain, "a plaintext client was served on the TLS port");
}
