//! Where the rare INTERNAL during shutdown comes from, reproduced on demand.
//!
//! A server that shuts down gracefully sends GOAWAY(last id = 2^31-1) and a
//! PING, and once the PING is answered a final GOAWAY naming the last stream
//! it took. A stream the client opened after that choice but before the
//! final GOAWAY reached it was never processed (RFC 9113 §6.8: safe to
//! retry). grpc-java and grpcio report such a stream as UNAVAILABLE; tonic's
//! client maps the h2 error `GoAway(NO_ERROR, Remote)` to INTERNAL
//! (`Status::code_from_h2`). The server answers no call with INTERNAL here:
//! the status is made by the client from a transport event.
//!
//! The proxy below widens that window from microseconds to as long as the
//! test likes, by holding the final GOAWAY on its way to the client.

use std::net::SocketAddr;
use std::time::Duration;

use batch_history::proto::{self, CreateBatchRequest, batch_history_client::BatchHistoryClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use crate::support::{TestApp, column, refused_by_goaway};

const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// Forwards one HTTP/2 connection to `server`. From the server's first
/// GOAWAY on, it holds everything the server sends and answers the server's
/// PING itself, so the server chooses its last stream while the client has
/// heard of no GOAWAY at all; the held frames go out when released.
struct GoAwayHoldingProxy {
    addr: SocketAddr,
    /// The last stream id of the server's final GOAWAY, once it is held.
    held: oneshot::Receiver<u32>,
    release: oneshot::Sender<()>,
}

impl GoAwayHoldingProxy {
    async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (held_tx, held) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let upstream = TcpStream::connect(server).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut upstream_read, mut upstream_write) = upstream.into_split();
            let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                loop {
                    let bytes = tokio::select! {
                        read = client_read.read(&mut buffer) => match read {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buffer[..n].to_vec(),
                        },
                        Some(pong) = pong_rx.recv() => pong,
                    };
                    // Once the server has closed, what the client sends is
                    // lost, as on a real network; it is still read, since
                    // closing a socket with unread data resets it.
                    let _ = upstream_write.write_all(&bytes).await;
                }
            });
            let (mut held_tx, mut release_rx) = (Some(held_tx), Some(release_rx));
            // Frames kept back from the client: from the first GOAWAY until
            // the final one is released.
            let mut holding: Option<Vec<u8>> = None;
            let mut header = [0_u8; 9];
            while upstream_read.read_exact(&mut header).await.is_ok() {
                let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0; length];
                if upstream_read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let (kind, flags) = (header[3], header[4]);
                if kind == GOAWAY && release_rx.is_some() {
                    holding.get_or_insert_with(Vec::new);
                }
                let Some(held) = holding.as_mut() else {
                    if client_write.write_all(&header).await.is_err()
                        || client_write.write_all(&payload).await.is_err()
                    {
                        break;
                    }
                    continue;
                };
                if kind == PING && flags & ACK == 0 {
                    let mut pong = header.to_vec();
                    pong[4] = ACK;
                    pong.extend_from_slice(&payload);
                    let _ = pong_tx.send(pong);
                }
                held.extend_from_slice(&header);
                held.extend_from_slice(&payload);
                if kind == GOAWAY && last_stream_id(&payload) != MAX_STREAM_ID {
                    let _ = held_tx.take().unwrap().send(last_stream_id(&payload));
                    let _ = release_rx.take().unwrap().await;
                    if client_write.write_all(held).await.is_err() {
                        break;
                    }
                    holding = None;
                }
            }
            if let Some(held) = holding {
                let _ = client_write.write_all(&held).await;
            }
            let _ = client_write.shutdown().await;
        });
        Self {
            addr,
            held,
            release,
        }
    }
}

fn last_stream_id(goaway: &[u8]) -> u32 {
    u32::from_be_bytes(goaway[..4].try_into().unwrap()) & MAX_STREAM_ID
}

fn create(batch_id: &str) -> CreateBatchRequest {
    CreateBatchRequest {
        batch_id: batch_id.into(),
        batch: Some(proto::Batch::default()),
    }
}

#[tokio::test]
async fn a_call_sent_after_the_servers_last_stream_is_refused_unprocessed() {
    let mut app = TestApp::spawn().await;
    let proxy = GoAwayHoldingProxy::start(app.addr).await;
    let mut client = BatchHistoryClient::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    client.create_batch(create("before")).await.unwrap();

    app.begin_stop();
    let last_stream = tokio::time::timeout(Duration::from_secs(5), proxy.held)
        .await
        .expect("the server sends a final GOAWAY")
        .unwrap();
    assert_eq!(
        last_stream, 1,
        "the server took the first call's stream only"
    );
    // The client has heard of no GOAWAY yet, so it opens a stream on the
    // same connection, which the server has already decided not to take.
    let late = tokio::spawn({
        let mut client = client.clone();
        async move { client.create_batch(create("late")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!late.is_finished(), "the server ignores the late stream");
    proxy.release.send(()).unwrap();
    let status = late.await.unwrap().expect_err("the late call was refused");

    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(refused_by_goaway(&status), "{status:?}");
    let stored = app.db.client().await;
    let ids: Vec<String> = column(&stored, "SELECT batch_id FROM batches ORDER BY batch_id").await;
    assert_eq!(ids, ["before"], "the refused call wrote nothing");
    app.stop().await;
}
