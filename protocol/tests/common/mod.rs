//! A TCP relay on loopback that damages one chosen byte in each direction.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Copies `from` to `to`, flipping the low bit of the byte at stream offset `flip`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, flip: Option<usize>) {
    let mut offset = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip.filter(|at| (offset..offset + n).contains(at)) {
            buf[at - offset] ^= 0x01;
        }
        offset += n;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Starts `serve` on a listener at 127.0.0.1:0 and connects to it through a damaging
/// relay; returns the client's socket and the server task.
pub async fn connect_through_relay<F>(
    serve: impl FnOnce(TcpListener) -> F,
    to_server: Option<usize>,
    to_client: Option<usize>,
) -> (TcpStream, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener));
    let relay = damaging_relay(server_addr, to_server, to_client).await;
    (TcpStream::connect(relay).await.unwrap(), server)
}

/// Listens on 127.0.0.1:0 and relays one connection to `server`, damaging the byte at
/// `to_server` of the client's stream and at `to_client` of the server's.
async fn damaging_relay(
    server: SocketAddr,
    to_server: Option<usize>,
    to_client: Option<usize>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(server).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = upstream.into_split();
        tokio::join!(pump(cr, sw, to_server), pump(sr, cw, to_client));
    });
    addr
}
