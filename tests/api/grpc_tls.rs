//! TLS on the gRPC port, with certificates made at test time by openssl:
//! mutual TLS through the healthcheck command, grpcurl and tonic, and a
//! certificate rotated under a running server.

use std::{path::PathBuf, process::Command, time::Duration};

use batch_history::proto::{CreateBatchRequest, batch_history_client::BatchHistoryClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::reflection::grpcurl;
use crate::support::process::ServerProcess;
use crate::support::{TestDb, rand_u64};

/// A scratch directory of keys and certificates, removed on drop.
pub struct Pki(PathBuf);

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("bh-pki-{:016x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.0)
            .output()
            .expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    }

    /// A self-signed CA: `name`.key and `name`.pem.
    pub fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
    }

    /// A leaf `name`.key and `name`.pem issued by `ca`, for `usage`
    /// (serverAuth or clientAuth), valid for localhost and 127.0.0.1.
    pub fn leaf(&self, name: &str, ca: &str, usage: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let extensions =
            format!("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n");
        std::fs::write(self.0.join(format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Puts `from` in place of `to` in one step, as a secret mount would.
    fn replace(&self, from: &str, to: &str) {
        let staged = self.0.join(format!("{to}.staged"));
        std::fs::copy(self.0.join(from), &staged).unwrap();
        std::fs::rename(staged, self.0.join(to)).unwrap();
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn tls_client(
    pki: &Pki,
    addr: std::net::SocketAddr,
    ca: &str,
) -> Result<BatchHistoryClient<tonic::transport::Channel>, tonic::transport::Error> {
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read("client.pem"), read("client.key")))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(BatchHistoryClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_grpcurl_tonic_and_the_healthcheck_and_rotates_on_sighup() {
    let pki = Pki::new();
    pki.ca("ca");
    pki.leaf("server", "ca", "serverAuth");
    pki.leaf("client", "ca", "clientAuth");
    pki.replace("server.pem", "live.pem");
    pki.replace("server.key", "live.key");
    let db = TestDb::create().await;
    let url = db.url(None);
    let (cert, key, client_ca) = (
        pki.path("live.pem"),
        pki.path("live.key"),
        pki.path("ca.pem"),
    );
    let mut server = ServerProcess::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("TLS_CERT_FILE", cert.as_str()),
        ("TLS_KEY_FILE", key.as_str()),
        ("TLS_CLIENT_CA_FILE", client_ca.as_str()),
    ]);
    let (ca, client_pem, client_key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let mutual = [
        "--tls-ca-file",
        ca.as_str(),
        "--tls-cert-file",
        client_pem.as_str(),
        "--tls-key-file",
        client_key.as_str(),
        "--tls-server-name",
        "localhost",
    ];
    tokio::task::block_in_place(|| server.wait_healthy(Duration::from_secs(20), &mutual));
    assert!(!server.healthcheck(&[]), "plain HTTP/2 is refused");
    assert!(
        !server.healthcheck(&mutual[..2]),
        "a client without a certificate is refused"
    );

    let addr = server.addr.to_string();
    let grpcurl_tls = |args: &[&str]| {
        let mut all = vec!["-cacert", &ca, "-cert", &client_pem, "-key", &client_key];
        all.extend_from_slice(&["-authority", "localhost"]);
        all.extend_from_slice(args);
        grpcurl(&all)
    };
    let (list, create) = tokio::task::block_in_place(|| {
        let list = grpcurl_tls(&[&addr, "list"]);
        let create = grpcurl_tls(&[
            "-d",
            r#"{"batch_id": "over-tls", "batch": {"model": "m"}}"#,
            &addr,
            "batchhistory.v1.BatchHistory/CreateBatch",
        ]);
        (list, create)
    });
    assert!(list.status.success(), "{list:?}");
    assert!(String::from_utf8_lossy(&list.stdout).contains("batchhistory.v1.BatchHistory"));
    assert!(create.status.success(), "{create:?}");

    let mut client = tls_client(&pki, server.addr, "ca.pem").await.unwrap();
    client
        .create_batch(CreateBatchRequest {
            batch_id: "from-tonic".into(),
            batch: Some(Default::default()),
        })
        .await
        .unwrap();
    let stored: i64 = db.count_rows("batches").await;
    assert_eq!(stored, 2);

    // Rotate to a certificate from another CA; SIGHUP makes it take effect.
    pki.ca("ca2");
    pki.leaf("server2", "ca2", "serverAuth");
    pki.replace("server2.key", "live.key");
    pki.replace("server2.pem", "live.pem");
    server.signal("-HUP");
    let ca2 = pki.path("ca2.pem");
    let rotated = [&["--tls-ca-file", ca2.as_str()], &mutual[2..]].concat();
    // The new certificate is served (wait_healthy panics with the logs if not).
    tokio::task::block_in_place(|| server.wait_healthy(Duration::from_secs(10), &rotated));
    assert!(!server.healthcheck(&mutual), "the old one is gone");
    assert!(server.logs().contains("TLS certificates reloaded"));

    // A broken replacement keeps the working certificate in use.
    std::fs::write(pki.path("live.pem"), "not a certificate").unwrap();
    server.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.healthcheck(&rotated),
        "still served:\n{}",
        server.logs()
    );
    assert!(server.logs().contains("TLS certificates not reloaded"));

    // Without a signal, a changed file is noticed too.
    pki.replace("server.key", "live.key");
    pki.replace("server.pem", "live.pem");
    tokio::task::block_in_place(|| server.wait_healthy(Duration::from_secs(15), &mutual));
}
