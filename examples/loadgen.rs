//! Load generator: N concurrent clients call a running batch-history server
//! for T seconds per operation, through the project's own generated client,
//! and report throughput, latency percentiles and errors by status code.
//!
//! It expects the database to hold batches seeded by `bench/run.sh`: ids
//! `seed-0000000` … with every tenth one RUNNING.
//!
//! ```sh
//! cargo run --release --example loadgen -- --addr http://127.0.0.1:50051 \
//!     --clients 32 --seconds 10 --seeded 10000
//! ```

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use batch_history::proto::{
    self, BatchView, CreateBatchRequest, GetBatchRequest, GetBatchStatsRequest, ListBatchesRequest,
    RecordProgressRequest, batch::State, batch_history_client::BatchHistoryClient,
};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
struct Args {
    /// Server to load.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// HTTP/2 connections the clients share, round robin; 0 gives each
    /// client its own.
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Seconds per operation.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Number of seeded batches (ids seed-0000000 onwards).
    #[arg(long)]
    seeded: u64,
    /// Draw GetBatch's and RecordProgress's ids from the newest N seeded
    /// batches only, as a dashboard reads and writes its recent ones; all
    /// of them by default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..))]
    hot: Option<u64>,
    /// Operations to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "create,progress,get,list-deep,list-filtered,list-provider"
    )]
    ops: Vec<Op>,
    /// Print one JSON object per operation instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    /// CreateBatch with a server-generated id.
    Create,
    /// RecordProgress on a random seeded RUNNING batch.
    Progress,
    /// GetBatch of a random seeded batch.
    Get,
    /// ListBatches: one page of 50 at a random depth, via a real page token.
    ListDeep,
    /// ListDeep in BATCH_VIEW_BASIC: without errors and model switches.
    ListBasic,
    /// ListBatches: the first page of 50 RUNNING batches.
    ListFiltered,
    /// ListBatches: the first page of 50 of one provider's batches.
    ListProvider,
    /// ListBatches: one page of 50 of one provider's batches at a random
    /// depth, via a real page token.
    ListProviderDeep,
    /// GetBatchStats over every batch: the largest aggregate.
    Stats,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Progress => "progress",
            Op::Get => "get",
            Op::ListDeep => "list-deep",
            Op::ListBasic => "list-basic",
            Op::ListFiltered => "list-filtered",
            Op::ListProvider => "list-provider",
            Op::ListProviderDeep => "list-provider-deep",
            Op::Stats => "stats",
        }
    }
}

/// One client's results.
struct Tally {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let endpoint = Endpoint::from_shared(args.addr.clone())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let connections = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(endpoint.connect().await?);
    }
    let clients: Vec<_> = (0..args.clients)
        .map(|n| BatchHistoryClient::new(channels[n % connections].clone()))
        .collect();
    let needs = |ops: &[Op]| ops.iter().any(|op| args.ops.contains(op));
    let tokens = Arc::new(Tokens {
        all: if needs(&[Op::ListDeep, Op::ListBasic]) {
            page_tokens(clients[0].clone(), "").await?
        } else {
            Vec::new()
        },
        provider: if needs(&[Op::ListProviderDeep]) {
            page_tokens(clients[0].clone(), PROVIDER).await?
        } else {
            Vec::new()
        },
    });

    // Measurement starts here: a harness that reads CPU times waits for this.
    eprintln!("ready");
    if !args.json {
        println!(
            "{:<14} {:>7} {:>10} {:>9} {:>9} {:>9}  errors",
            "operation", "clients", "ops/s", "p50 ms", "p99 ms", "p99.9 ms"
        );
    }
    let drawn = Drawn {
        first: args.seeded - args.hot.unwrap_or(args.seeded).min(args.seeded),
        end: args.seeded,
    };
    for &op in &args.ops {
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(n, client)| {
                let client = client.clone();
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    drive(op, client, drawn, &tokens, deadline, seed_for(n)).await
                })
            })
            .collect();
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut errors = BTreeMap::new();
        for task in tasks {
            let tally = task.await?;
            latencies.add(&tally.latencies)?;
            for (code, count) in tally.errors {
                *errors.entry(code).or_insert(0) += count;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ops = latencies.len() + errors.values().sum::<u64>();
        let per_second = ops as f64 / elapsed;
        let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1_000.0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "op": op.name(), "clients": args.clients, "seconds": elapsed,
                    "ops": ops, "ops_per_second": per_second,
                    "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                    "errors": errors,
                })
            );
        } else {
            println!(
                "{:<14} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2}  {:?}",
                op.name(),
                args.clients,
                per_second,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                errors
            );
        }
    }
    Ok(())
}

/// One client: calls `op` back to back until `deadline`.
async fn drive(
    op: Op,
    mut client: BatchHistoryClient<Channel>,
    drawn: Drawn,
    tokens: &Tokens,
    deadline: Instant,
    seed: u64,
) -> Tally {
    let mut random = XorShift(seed);
    let mut tally = Tally {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        errors: BTreeMap::new(),
    };
    while Instant::now() < deadline {
        let started = Instant::now();
        let result = match op {
            Op::Create => client
                .create_batch(CreateBatchRequest {
                    batch: Some(proto::Batch {
                        provider: "groq".into(),
                        model: "llama-3.3-70b-versatile".into(),
                        target_count: 100,
                        ..Default::default()
                    }),
                    batch_id: String::new(),
                })
                .await
                .map(drop),
            Op::Progress => client
                .record_progress(RecordProgressRequest {
                    batch_id: seed_id(drawn.running(&mut random)),
                    samples_delta: 1,
                    tokens_delta: 1_500,
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::Get => client
                .get_batch(GetBatchRequest {
                    batch_id: seed_id(drawn.any(&mut random)),
                })
                .await
                .map(drop),
            Op::ListDeep | Op::ListBasic => client
                .list_batches(ListBatchesRequest {
                    page_size: 50,
                    page_token: random.pick(&tokens.all).clone(),
                    view: if op == Op::ListBasic {
                        BatchView::Basic
                    } else {
                        BatchView::Full
                    } as i32,
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::ListFiltered => client
                .list_batches(ListBatchesRequest {
                    page_size: 50,
                    states: vec![State::Running as i32],
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::ListProvider => client
                .list_batches(ListBatchesRequest {
                    page_size: 50,
                    provider: PROVIDER.into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::ListProviderDeep => client
                .list_batches(ListBatchesRequest {
                    page_size: 50,
                    provider: PROVIDER.into(),
                    page_token: random.pick(&tokens.provider).clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::Stats => client
                .get_batch_stats(GetBatchStatsRequest::default())
                .await
                .map(drop),
        };
        match result {
            Ok(()) => {
                let micros = started.elapsed().as_micros().max(1) as u64;
                tally.latencies.saturating_record(micros);
            }
            Err(status) => {
                *tally
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_insert(0) += 1;
            }
        }
    }
    tally
}

/// Page tokens spread over the newest million batches of the default
/// listing (bench/harness.py's DEEPEST), gathered by walking it in pages of
/// 1,000 (a token is bound to filters and order, not to the page size, so
/// each one starts a page of 50 at its depth). A keyset page costs the same
/// at any depth; walking ten million batches would take minutes.
async fn page_tokens(
    mut client: BatchHistoryClient<Channel>,
    provider: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut tokens = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_batches(ListBatchesRequest {
                page_size: 1_000,
                page_token: token,
                provider: provider.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        if page.next_page_token.is_empty() || tokens.len() == DEEPEST_PAGES {
            break;
        }
        token = page.next_page_token;
        tokens.push(token.clone());
    }
    if tokens.is_empty() {
        return Err(tonic::Status::failed_precondition(
            "list-deep needs more than 1,000 batches; seed the database first",
        ));
    }
    Ok(tokens)
}

/// The provider of every other seeded batch, which the provider listings
/// filter on.
const PROVIDER: &str = "groq";

/// Page tokens of the default listing, and of one provider's.
struct Tokens {
    all: Vec<String>,
    provider: Vec<String>,
}

/// How many pages of 1,000 [`page_tokens`] walks at most.
const DEEPEST_PAGES: usize = 1_000;

/// The seeded batches GetBatch and RecordProgress draw from: numbers
/// `first..end`.
#[derive(Debug, Clone, Copy)]
struct Drawn {
    first: u64,
    end: u64,
}

impl Drawn {
    fn any(self, random: &mut XorShift) -> u64 {
        self.first + random.below(self.end - self.first)
    }

    /// Every tenth seeded batch is RUNNING.
    fn running(self, random: &mut XorShift) -> u64 {
        let first = self.first.div_ceil(10);
        (first + random.below(self.end.div_ceil(10) - first)) * 10
    }
}

fn seed_id(n: u64) -> String {
    format!("seed-{n:07}")
}

fn seed_for(client: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// A tiny fast PRNG; the distribution only needs to spread rows.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }

    fn pick<'a, T>(&mut self, values: &'a [T]) -> &'a T {
        &values[self.below(values.len() as u64) as usize]
    }
}
