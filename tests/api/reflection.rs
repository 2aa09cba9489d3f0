//! Server reflection, through the operators' tool: grpcurl (v1alpha only).

use std::process::{Command, Output};

use crate::support::TestApp;

/// grpcurl from `GRPCURL`, else from `PATH`. `.ci/run` installs it.
pub fn grpcurl(args: &[&str]) -> Output {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); install grpcurl or set GRPCURL"))
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_without_proto_files() {
    let app = TestApp::spawn().await;
    let addr = app.addr.to_string();

    let output = tokio::task::spawn_blocking(move || {
        let list = grpcurl(&["-plaintext", &addr, "list"]);
        let describe = grpcurl(&["-plaintext", &addr, "describe", "batchhistory.v1.Batch"]);
        let create = grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"batch_id": "from-grpcurl", "batch": {"provider": "groq", "model": "llama", "target_count": 10, "metadata": {"smart_mode": true}}}"#,
            &addr,
            "batchhistory.v1.BatchHistory/CreateBatch",
        ]);
        let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        (list, describe, create, health)
    })
    .await
    .unwrap();
    let (list, describe, create, health) = output;

    let list = stdout(&list);
    assert!(list.contains("batchhistory.v1.BatchHistory"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let describe = stdout(&describe);
    assert!(describe.contains("samples_generated"), "{describe}");
    // The proto's comments reach operators.
    assert!(
        describe.contains("Changes on every modification"),
        "{describe}"
    );

    let create: serde_json::Value = serde_json::from_str(&stdout(&create)).unwrap();
    assert_eq!(create["batchId"], "from-grpcurl");
    assert_eq!(create["state"], "RUNNING");
    assert_eq!(create["metadata"]["smart_mode"], true);

    assert!(stdout(&health).contains("SERVING"));

    let stored: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM batches WHERE batch_id = 'from-grpcurl'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}
