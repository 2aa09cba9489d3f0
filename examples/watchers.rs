//! Measures WatchBatches fan-out: N watchers on one server while writers
//! create M batches; reports how many watchers saw every creation, how many
//! were cut off, and the delay from a batch's start_time (set by the database
//! on insert) to its arrival at a watcher.
//!
//! ```sh
//! cargo run --release --example watchers -- --addr http://127.0.0.1:50051 --watchers 100 --changes 2000
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batch_history::proto::{
    self, CreateBatchRequest, WatchBatchesRequest, batch_event::Kind,
    batch_history_client::BatchHistoryClient,
};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    #[arg(long, default_value_t = 2_000)]
    changes: usize,
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let run = format!("wt{}", now_micros());
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut client = BatchHistoryClient::connect(args.addr.clone()).await?;
        let mut stream = client
            .watch_batches(WatchBatchesRequest {
                provider: run.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let expected = args.changes;
        watchers.push(tokio::spawn(async move {
            let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut created = 0;
            let ended = loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Ok(Ok(Some(event))) if event.kind() == Kind::Created => {
                        let start = event.batch.and_then(|b| b.start_time).unwrap_or_default();
                        let sent = start.seconds * 1_000_000 + i64::from(start.nanos / 1_000);
                        delays.saturating_record((now_micros() - sent).max(1) as u64);
                        created += 1;
                        if created == expected {
                            break None;
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(status)) => break Some(format!("{:?}", status.code())),
                    Ok(Ok(None)) => break Some("ended".into()),
                    Err(_) => break Some("silent for 10 s".into()),
                }
            };
            (created, ended, delays)
        }));
    }
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let (addr, run, count) = (args.addr.clone(), run.clone(), args.changes / args.writers);
            tokio::spawn(async move {
                let mut client = BatchHistoryClient::connect(addr).await.expect("connect");
                for n in 0..count {
                    client
                        .create_batch(CreateBatchRequest {
                            batch_id: format!("{run}-{w}-{n}"),
                            batch: Some(proto::Batch {
                                provider: run.clone(),
                                ..Default::default()
                            }),
                        })
                        .await
                        .expect("create");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await?;
    }
    let written = started.elapsed();
    let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut complete, mut cut_off) = (0, Vec::new());
    for watcher in watchers {
        let (created, ended, histogram) = watcher.await?;
        delays.add(&histogram)?;
        match ended {
            None => complete += 1,
            Some(why) => cut_off.push(format!("{why} after {created}")),
        }
    }
    let ms = |q| delays.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "{} watchers, {} creations in {:.2} s ({:.0}/s): {complete} saw all, cut off: {:?}",
        args.watchers,
        args.changes,
        written.as_secs_f64(),
        args.changes as f64 / written.as_secs_f64(),
        cut_off
    );
    println!(
        "delivery delay from insert: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events delivered)",
        ms(0.5),
        ms(0.99),
        delays.max() as f64 / 1_000.0,
        delays.len()
    );
    Ok(())
}
