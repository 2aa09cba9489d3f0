//! A first run with no DATABASE_URL: a private PostgreSQL made from the
//! server binaries on the machine, kept between runs.

use std::{path::Path, process::Command, time::Duration};

use batch_history::proto::{
    CreateBatchRequest, GetBatchRequest, ListBatchesRequest,
    batch_history_client::BatchHistoryClient,
};

use crate::support::process::{ServerProcess, TempDir, free_addr};
use crate::support::{rand_u64, test_server};

fn serve(data_dir: &TempDir) -> ServerProcess {
    let dir = data_dir.0.to_str().unwrap();
    let mut server = ServerProcess::spawn(&[("DATABASE_URL", ""), ("DATA_DIR", dir)]);
    server.wait_serving(Duration::from_secs(90));
    server
}

async fn client(server: &ServerProcess) -> BatchHistoryClient<tonic::transport::Channel> {
    BatchHistoryClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
}

#[tokio::test]
async fn import_then_serve_without_a_database_url_runs_a_private_cluster_and_keeps_its_data() {
    let data_dir = TempDir::new("bh-first-run");
    // A complete local trial: import the legacy file, then serve it.
    let file = std::env::temp_dir().join(format!("bh-first-run-{:016x}.db", rand_u64()));
    let made = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy/make_legacy_db.py"))
        .arg(&file)
        .args(["--rows", "5"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let imported = Command::new(env!("CARGO_BIN_EXE_batch-history"))
        .args(["import-sqlite", "--json"])
        .arg(&file)
        .env_remove("DATABASE_URL")
        .env("DATA_DIR", &data_dir.0)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(imported.status.success(), "{imported:?}");
    assert!(
        !data_dir.0.join("postmaster.pid").exists(),
        "the import stops the cluster it started"
    );

    let mut server = serve(&data_dir);
    let logs = server.logs();
    assert!(logs.contains("private PostgreSQL"), "{logs}");
    assert!(
        logs.contains(&format!("psql -h {}", data_dir.0.display())),
        "{logs}"
    );
    assert!(
        data_dir.0.join(".s.PGSQL.5432").exists(),
        "a socket, not a port"
    );
    let listed = client(&server)
        .await
        .list_batches(ListBatchesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.batches.len(), 5, "the imported history is served");
    client(&server)
        .await
        .create_batch(CreateBatchRequest {
            batch_id: "local-1".into(),
            batch: Some(Default::default()),
        })
        .await
        .unwrap();
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    assert!(
        !data_dir.0.join("postmaster.pid").exists(),
        "the cluster stops with the service"
    );

    // The second run reuses the data.
    let mut again = serve(&data_dir);
    let stored = client(&again)
        .await
        .get_batch(GetBatchRequest {
            batch_id: "local-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.batch_id, "local-1");
    again.sigterm();
    assert!(again.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn with_nothing_on_the_default_port_the_tests_start_their_own_cluster() {
    let cluster_dir = TempDir::new("bh-test-server");
    let (dir, unused) = (cluster_dir.0.clone(), free_addr());
    let (config, cluster) = tokio::task::spawn_blocking(move || test_server(None, unused, &dir))
        .await
        .unwrap();
    let cluster = cluster.expect("a private cluster, as nothing answers on the port");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    client
        .batch_execute("CREATE DATABASE bh_harness_check")
        .await
        .unwrap();
    drop(client);
    let _ = connection.await;
    cluster.stop().await.unwrap();
    assert!(!cluster_dir.0.join("postmaster.pid").exists());
}
