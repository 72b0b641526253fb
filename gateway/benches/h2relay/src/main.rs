//! The floor of a middle that terminates HTTP/2: a relay with nothing but
//! the `h2` crate, for the gateway bench's `h2-floor` setup.
//!
//! `h2relay --target HOST:PORT` listens on a free loopback port, prints
//! `LISTENING <addr>`, and relays every request on every connection to the
//! target, on one upstream connection per downstream one: headers as they
//! came, data frames as they come, trailers; the response the same way
//! back. As the hub and agent run: one runtime thread, jemalloc,
//! `TCP_NODELAY`. Nothing else: no routing, no auth, no metrics, no
//! bound on what it buffers for a slow peer (a bench instrument, not a
//! proxy to deploy). It exits when its stdin reaches EOF.

use std::io::Write;

use bytes::Bytes;

/// Windows the relay gives each side (a stream's, a connection's): large
/// enough that flow control never holds a bench workload back.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 22;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args = std::env::args().skip_while(|a| a != "--target");
    let Some(target) = args.nth(1) else {
        eprintln!("usage: h2relay --target HOST:PORT");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        println!("LISTENING {}", listener.local_addr().expect("address"));
        std::io::stdout().flush().expect("stdout");
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(connection(tcp, target.clone()));
        }
    });
}

/// One downstream connection and its upstream connection.
async fn connection(tcp: tokio::net::TcpStream, target: String) {
    let _ = tcp.set_nodelay(true);
    let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(up)
        .await
    else {
        return;
    };
    tokio::spawn(conn);
    let Ok(mut server) = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return;
    };
    while let Some(Ok((request, respond))) = server.accept().await {
        tokio::spawn(relay(request, respond, sender.clone()));
    }
}

/// One call: its request upstream, its response back, both at once.
async fn relay(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    sender: h2::client::SendRequest<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let end = body.is_end_stream();
    let Ok(mut sender) = sender.ready().await else {
        return;
    };
    let Ok((response, send)) = sender.send_request(http::Request::from_parts(parts, ()), end)
    else {
        return;
    };
    let up = async move {
        if !end {
            copy(body, send).await;
        }
    };
    let down = async move {
        let Ok(response) = response.await else {
            return;
        };
        let (parts, body) = response.into_parts();
        let end = body.is_end_stream();
        let Ok(send) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
            return;
        };
        if !end {
            copy(body, send).await;
        }
    };
    tokio::join!(up, down);
}

/// Data frames, then trailers (or the end), from one stream to the other.
async fn copy(mut from: h2::RecvStream, mut to: h2::SendStream<Bytes>) {
    while let Some(Ok(data)) = from.data().await {
        let n = data.len();
        let end = from.is_end_stream();
        let _ = from.flow_control().release_capacity(n);
        if to.send_data(data, end).is_err() || end {
            return;
        }
    }
    match from.trailers().await {
        Ok(Some(trailers)) => {
            let _ = to.send_trailers(trailers);
        }
        _ => {
            let _ = to.send_data(Bytes::new(), true);
        }
    }
}
