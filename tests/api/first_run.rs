//! A first run with no DATABASE_URL: a private PostgreSQL made from the
//! server binaries on the machine, kept between runs.

use std::{path::Path, process::Command, time::Duration};

use batch_history::proto::{
    CreateBatchRequest, GetBatchRequest, ListBatchesRequest,
    batch_history_client::BatchHistoryClient,
};

use crate::helpers::rand_u64;
use crate::process::{ServerProcess, TempDir};

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
