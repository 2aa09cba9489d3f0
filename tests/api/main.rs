//! End-to-end tests: the real server, a real gRPC client, a real database.

mod batches;
mod failover;
mod faults;
mod first_run;
mod goaway;
mod grpc_tls;
mod health;
mod import;
mod list;
mod live;
mod months;
mod observability;
mod outage;
mod pooler;
mod progress;
mod reflection;
mod reliability;
mod save;
mod shared_reads;
mod stats;
mod support;
mod web;
