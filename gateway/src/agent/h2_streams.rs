//! The two halves of one call on an `h2` client stream: the request body
//! sent only as the upstream's flow-control window allows
//! ([`RequestPump`]), and the response body read from the stream
//! ([`ResponseBody`]), releasing window as the tunnel takes each chunk.
//!
//! Both keep the memory a call can hold bounded by the HTTP/2 windows: past
//! its first chunk (handed over with the HEADERS, so that a unary request
//! leaves in one write), the pump never hands `h2` more than the capacity
//! it was assigned (`h2` would otherwise buffer without bound for a slow
//! upstream), and the response's window is given back only after the data
//! left this process.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};

/// The request body of one call, fed into its `h2` send stream.
///
/// Driven by the call's own task until the response's head arrives (a
/// unary request has ended by then: the upstream answers once it has the
/// whole request); a body still open after that, a stream's, is driven by
/// a task of its own ([`RequestPump::spawn`]).
pub(crate) struct RequestPump {
    body: Pin<Box<tonic::body::Body>>,
    send: h2::SendStream<Bytes>,
    /// Data taken from the body and not yet sent: waits for window.
    waiting: Option<Bytes>,
    /// Whether any data went to `h2` yet: the first chunk does not wait,
    /// and the body is polled again at once after it, so that an end that
    /// comes after the data leaves in the same write too. (Waiting for
    /// window after every chunk handed over instead would delay that end
    /// until the stream is open: a second write per unary call.)
    started: bool,
}

impl RequestPump {
    pub(crate) fn new(body: tonic::body::Body, send: h2::SendStream<Bytes>) -> Self {
        Self {
            body: Box::pin(body),
            send,
            waiting: None,
            started: false,
        }
    }

    /// Sends the rest of the body from a task of its own. Must run inside
    /// the runtime.
    pub(crate) fn spawn(mut self) {
        tokio::spawn(std::future::poll_fn(move |cx| self.poll_pump(cx)));
    }

    /// Sends until the body is done (`Ready`) or must wait: for the
    /// body's next frame or for window. Ready also when the upstream reset
    /// the stream, or the body failed (the stream is reset then).
    pub(crate) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.started {
                if let Some(data) = self.waiting.take() {
                    // The first chunk goes to `h2` at once, before the
                    // stream is open and has been assigned any window: it
                    // then leaves in the same write as the HEADERS (a unary
                    // request in one write, one wake-up of the upstream,
                    // not two). It is held in memory either way, here or
                    // in `h2`, and counts against the window when sent.
                    self.started = true;
                    let end = self.body.is_end_stream();
                    if self.send.send_data(data, end).is_err() || end {
                        return Poll::Ready(());
                    }
                    continue;
                }
            }
            if let Some(data) = self.waiting.as_mut() {
                // Ask for the whole chunk; `h2` assigns what the windows
                // allow, and never more than it will send at once.
                self.send.reserve_capacity(data.len());
                match self.send.poll_capacity(cx) {
                    Poll::Pending => return self.reset_or_pending(cx),
                    // The stream is closed or reset: nothing more to send.
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                    Poll::Ready(Some(Ok(0))) => continue,
                    Poll::Ready(Some(Ok(n))) => {
                        let chunk = data.split_to(n.min(data.len()));
                        if data.is_empty() {
                            self.waiting = None;
                        }
                        // The last chunk of a body that is known to end
                        // here carries END_STREAM itself.
                        let end = self.waiting.is_none() && self.body.is_end_stream();
                        if self.send.send_data(chunk, end).is_err() || end {
                            return Poll::Ready(());
                        }
                        continue;
                    }
                }
            }
            match self.body.as_mut().poll_frame(cx) {
                Poll::Pending => return self.reset_or_pending(cx),
                Poll::Ready(None) => {
                    let _ = self.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(_))) => {
                    // The caller's side failed (or went away): the
                    // upstream must not take a partial stream as whole.
                    self.send.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => self.waiting = Some(data),
                    Err(frame) => {
                        match frame.into_trailers() {
                            Ok(trailers) => {
                                let _ = self.send.send_trailers(trailers);
                            }
                            Err(_) => {
                                let _ = self.send.send_data(Bytes::new(), true);
                            }
                        }
                        return Poll::Ready(());
                    }
                },
            }
        }
    }

    /// `Ready` if the upstream reset the stream (it wants no more of the
    /// body), else `Pending`.
    fn reset_or_pending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.send.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body read from an `h2` stream: its data, then its trailers.
pub(crate) struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// Counts the call as open on its connection until the body is dropped.
    _in_use: StreamInUse,
}

impl ResponseBody {
    pub(crate) fn new(recv: h2::RecvStream, in_use: StreamInUse) -> Self {
        Self {
            recv,
            data_done: false,
            _in_use: in_use,
        }
    }
}

/// One call counted among those open on a connection, from its request's
/// HEADERS until it is dropped: with its response body, or with the call
/// when it ends before one.
pub(crate) struct StreamInUse(Arc<AtomicUsize>);

impl StreamInUse {
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for StreamInUse {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // The chunk is out of `h2`'s hands: the upstream may
                    // send as much again.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(status_of(e)))),
                Poll::Ready(None) => self.data_done = true,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(status_of(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// The status a call gets for an `h2` error on its stream or connection.
///
/// A lost connection to the upstream (an I/O error, or its GOAWAY before
/// the stream was done) is `UNAVAILABLE`: the call may be retried once the
/// upstream is back. A reset gets the code gRPC gives its reason (`CANCEL`
/// is `CANCELLED`, `REFUSED_STREAM` is `UNAVAILABLE`, …), as tonic's
/// `Channel` maps it.
pub(crate) fn status_of(e: h2::Error) -> tonic::Status {
    if e.is_io() || e.is_go_away() {
        return tonic::Status::unavailable(format!("connection to the upstream lost: {e}"));
    }
    tonic::Status::from_error(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::{status_of, RequestPump};
    use std::{
        pin::Pin,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::{Context, Poll},
        time::Duration,
    };

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::{mpsc, oneshot};
    use tonic::Code;

    const CHUNK: usize = 16 << 10;
    const WINDOW: u32 = 64 << 10;
    const TOTAL: usize = 4 << 20;

    /// A request body of `TOTAL` bytes, always ready, counting what was
    /// taken from it. With `end_known`, it says it has ended as soon as
    /// its last data is taken; without, only by returning `None` after it
    /// (as the tunnel's request body does when the half-close comes in a
    /// frame of its own).
    struct Counted {
        left: usize,
        taken: Arc<AtomicUsize>,
        end_known: bool,
    }

    impl http_body::Body for Counted {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let n = self.left.min(CHUNK);
            self.left -= n;
            self.taken.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![7u8; n])))))
        }

        fn is_end_stream(&self) -> bool {
            self.end_known && self.left == 0
        }
    }

    /// An upstream that stops reading (an HTTP/2 server over loopback TCP,
    /// a 64 KiB stream window it does not give back until told): the agent
    /// takes from the tunnel only what that window lets it send, not the
    /// whole body; once the upstream reads, the rest follows.
    #[tokio::test]
    async fn a_request_body_is_taken_only_as_the_upstreams_window_allows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (received_tx, mut received) = mpsc::unbounded_channel::<usize>();
        let (read_on, reading) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::Builder::new()
                .initial_window_size(WINDOW)
                .initial_connection_window_size(TOTAL as u32)
                .handshake::<_, Bytes>(tcp)
                .await
                .expect("handshake");
            let (req, _respond) = conn.accept().await.expect("a stream").expect("ok");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut got = 0;
            let mut reading = Some(reading);
            let mut held = 0;
            while let Some(Ok(data)) = body.data().await {
                got += data.len();
                held += data.len();
                let _ = received_tx.send(got);
                if got >= WINDOW as usize {
                    if let Some(reading) = reading.take() {
                        let _ = reading.await;
                    }
                }
                if reading.is_none() {
                    let _ = body.flow_control().release_capacity(held);
                    held = 0;
                }
            }
            let _ = received_tx.send(usize::MAX - usize::from(body.is_end_stream()));
        });

        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(conn);
        let mut sender = sender.ready().await.expect("ready");
        let request = http::Request::post(format!("http://{addr}/a.B/C"))
            .body(())
            .expect("request");
        let (_response, send) = sender.send_request(request, false).expect("stream");
        let taken = Arc::new(AtomicUsize::new(0));
        let body = Counted {
            left: TOTAL,
            taken: taken.clone(),
            end_known: true,
        };
        RequestPump::new(tonic::body::Body::new(body), send).spawn();

        let bound = Duration::from_secs(20);
        let mut got = 0;
        while got < WINDOW as usize {
            got = tokio::time::timeout(bound, received.recv())
                .await
                .expect("the window's bytes arrive")
                .expect("server running");
        }
        // The window is full and the upstream reads no more: what the pump
        // took is what went out plus the one chunk waiting for window.
        let took = taken.load(Ordering::SeqCst);
        assert!(
            took <= WINDOW as usize + CHUNK,
            "took {took} bytes from the tunnel for a {WINDOW}-byte window"
        );

        read_on.send(()).expect("server waiting");
        while got < TOTAL {
            got = tokio::time::timeout(bound, received.recv())
                .await
                .expect("the rest arrives")
                .expect("server running");
        }
        assert_eq!(got, TOTAL);
        let end = tokio::time::timeout(bound, received.recv())
            .await
            .expect("the stream ends")
            .expect("server running");
        // The last chunk carried END_STREAM (no empty frame after it).
        assert_eq!(end, usize::MAX - 1, "the stream ended with END_STREAM");
        assert_eq!(taken.load(Ordering::SeqCst), TOTAL);
    }

    /// A connection's socket, counting the writes made on it.
    struct CountingIo {
        io: tokio::net::TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountingIo {
        fn count(&self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
            if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }
    }

    impl tokio::io::AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            self.count(written)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            self.count(written)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A unary request (HEADERS, then one DATA frame that ends the
    /// stream) leaves in one write: its data does not wait for the window
    /// `h2` assigns only once the stream is open, which took a second
    /// write and woke the upstream twice per call; nor does its end when
    /// the body tells it only after the data. Rounds on one connection to
    /// a real `h2` server over loopback, the body's end known with its
    /// data and not.
    #[tokio::test]
    async fn a_unary_request_leaves_in_one_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (received_tx, mut received) = mpsc::unbounded_channel::<usize>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(tcp).await.expect("handshake");
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let received_tx = received_tx.clone();
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut got = 0;
                    while let Some(Ok(data)) = body.data().await {
                        got += data.len();
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                    let _ = received_tx.send(got);
                    let _ = respond.send_response(http::Response::new(()), true);
                });
            }
        });
        let writes = Arc::new(AtomicUsize::new(0));
        let io = CountingIo {
            io: tokio::net::TcpStream::connect(addr).await.expect("connect"),
            writes: writes.clone(),
        };
        let (sender, conn) = h2::client::handshake(io).await.expect("handshake");
        tokio::spawn(conn);
        for round in 0..6 {
            let mut sender = sender.clone().ready().await.expect("ready");
            let request = http::Request::post("http://upstream/echo.Echo/Unary")
                .body(())
                .expect("request");
            // Round 0 settles the connection's SETTINGS exchange.
            let before = writes.load(Ordering::SeqCst);
            let (response, send) = sender.send_request(request, false).expect("sent");
            let body = Counted {
                left: 100,
                taken: Arc::default(),
                end_known: round % 2 == 0,
            };
            let mut pump = RequestPump::new(tonic::body::Body::new(body), send);
            std::future::poll_fn(|cx| pump.poll_pump(cx)).await;
            let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .expect("the request arrives")
                .expect("server running");
            assert_eq!(got, 100);
            let response = response.await.expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            if round > 0 {
                let made = writes.load(Ordering::SeqCst) - before;
                assert_eq!(made, 1, "round {round}: the request took {made} writes");
            }
        }
    }

    #[test]
    fn h2_errors_become_the_codes_grpc_gives_them() {
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        assert_eq!(status_of(cancel).code(), Code::Cancelled);
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(status_of(refused).code(), Code::Unavailable);
        let protocol = h2::Error::from(h2::Reason::PROTOCOL_ERROR);
        assert_eq!(status_of(protocol).code(), Code::Internal);
    }
}
