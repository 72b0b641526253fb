//! Harnesses over each role's reader: a sequence of frames is fed to a
//! tunnel server or a tunnel client, as the opening RPC would deliver them,
//! the handlers and consumers it started run, and invariants are checked on
//! what the role wrote back.
//!
//! They run on one current-thread runtime per thread, reused from input to
//! input (building and dropping a runtime per input took a tenth of the
//! time), with its clock paused: the clock moves only when every task is
//! idle, so "wait until nothing is ready" is a short sleep, whatever the
//! tasks do. A task that never becomes idle (a busy loop) makes that sleep
//! never end, which the fuzzer reports as a timeout: a hang is found, not
//! cut off after a fixed number of polls. After each input, once its
//! tunnel is gone, no task may be left: that also keeps inputs apart.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures_core::Stream as FuturesStream;

use crate::{
    client::{reader::Reader, shared::Shared},
    engine::{
        stats::Meter,
        stream::{Event, Stream},
        writer::{Core, Writer},
    },
    info::Direction,
    pb,
    server::{
        dispatch::dispatch,
        reader::{ServerTunnel, TunnelContext},
    },
    wire::{
        frame::OutFrame,
        settings::{Options, Revision},
    },
};

/// Small limits, so that inputs can reach them.
fn options() -> Options {
    Options {
        max_revision: Revision::One,
        negotiate_zero: false,
        initial_window_size: 4096,
        max_message_size: 64 * 1024,
        max_concurrent_streams: 8,
        max_metadata_size: 1024,
        revision_zero_buffer: 8192,
        binary_metadata: crate::BinaryMetadata::Drop,
        settings_timeout: crate::wire::settings::DEFAULT_SETTINGS_TIMEOUT,
    }
}

thread_local! {
    static RUNTIME: std::cell::RefCell<Option<tokio::runtime::Runtime>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs one input on this thread's runtime, then checks that no task
/// outlived it (every handler and consumer ended with its tunnel). A
/// runtime that held a task past its input is dropped, so the next input
/// starts clean (and a property test shrinks to the input that leaked).
fn run<T>(input: impl std::future::Future<Output = T>) -> T {
    let rt = RUNTIME.with_borrow_mut(Option::take).unwrap_or_else(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    });
    let out = rt.block_on(async {
        let out = input.await;
        // Time enough for every deadline and timer a task may hold.
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        out
    });
    let left = rt.metrics().num_alive_tasks();
    assert_eq!(left, 0, "{left} task(s) outlived their tunnel");
    RUNTIME.with_borrow_mut(|slot| *slot = Some(rt));
    out
}

/// Lets spawned tasks run until none is ready: with the clock paused, a
/// sleep ends only when every task waits (on I/O, a channel or a timer).
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

/// Everything the writer has ready, without waiting.
fn drain<F: OutFrame>(writer: &mut Writer<F>) -> Vec<Result<F, tonic::Status>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(frame)) = Pin::new(&mut *writer).poll_next(&mut cx) {
        out.push(frame);
    }
    out
}

/// An inner service that reads the whole request and answers with one
/// small message.
fn echo_dispatch() -> crate::server::dispatch::Dispatch {
    let svc = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        use http_body_util::BodyExt;
        let _ = req.into_body().collect().await;
        let mut resp = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]),
        )));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok::<_, Infallible>(resp)
    });
    dispatch::<_, tonic::body::Body, _>(svc)
}

/// Feeds `frames` to a tunnel server and checks what it writes: frames only
/// for streams the client created (or -1), `response_headers` at most once
/// and before data, nothing after `close_stream`, and the tunnel ends at the
/// first fatal error.
pub fn server_frames(frames: Vec<pb::ClientToServer>) -> Vec<pb::ServerToClient> {
    run(async move {
        let (core, mut writer, gone) = Core::<pb::ServerToClient>::new(Meter::default());
        let cx = TunnelContext {
            opts: options(),
            dispatch: echo_dispatch(),
            extensions: http::Extensions::new(),
            metadata: Arc::new(http::HeaderMap::new()),
            direction: Direction::Forward,
            bin: Default::default(),
            authority: None,
        };
        let inbound = futures_util::stream::empty::<Result<pb::ClientToServer, tonic::Status>>();
        let mut tunnel = ServerTunnel::new(cx, core, gone, inbound);
        let mut created = std::collections::HashSet::new();
        for frame in frames {
            if let Some(pb::client_to_server::Frame::NewStream(_)) = &frame.frame {
                created.insert(frame.stream_id);
            }
            if tunnel.on_frame(frame).is_err() {
                break;
            }
            settle().await;
        }
        settle().await;
        let out = drain(&mut writer);
        check_server_output(&out, &created);
        drop(tunnel);
        out.into_iter().flatten().collect()
    })
}

fn check_server_output(
    out: &[Result<pb::ServerToClient, tonic::Status>],
    created: &std::collections::HashSet<i64>,
) {
    use pb::server_to_client::Frame;
    #[derive(Default)]
    struct Seen {
        headers: bool,
        data: bool,
        closed: bool,
    }
    let mut seen: HashMap<i64, Seen> = HashMap::new();
    for frame in out.iter().flatten() {
        let id = frame.stream_id;
        if id == -1 {
            continue;
        }
        assert!(
            created.contains(&id),
            "frame for stream {id} the client never created"
        );
        let s = seen.entry(id).or_default();
        match &frame.frame {
            Some(Frame::WindowUpdate(n)) => assert!(*n > 0, "zero window_update"),
            _ if s.closed => panic!("frame after close_stream on stream {id}"),
            Some(Frame::ResponseHeaders(_)) => {
                assert!(!s.headers && !s.data, "headers twice or after data on {id}");
                s.headers = true;
            }
            Some(Frame::ResponseMessage(_) | Frame::MoreResponseData(_)) => s.data = true,
            Some(Frame::CloseStream(_)) => s.closed = true,
            Some(Frame::Settings(_)) | None => panic!("unexpected frame on stream {id}"),
        }
    }
}

/// Feeds `frames` to a tunnel client with `streams` streams open (IDs
/// 1..=streams) and consumes every stream's events; checks that each stream
/// ends at most once and that the client only writes frames for its streams.
pub fn client_frames(streams: u8, frames: Vec<pb::ServerToClient>) {
    run(async move {
        let (core, mut writer, gone) = Core::<pb::ClientToServer>::new(Meter::default());
        let (shared, register) = Shared::new(
            core.clone(),
            options(),
            Revision::One,
            4096,
            Default::default(),
            Direction::Forward,
            tracing::Span::none(),
        );
        let inbound = futures_util::stream::empty::<Result<pb::ServerToClient, tonic::Status>>();
        let mut reader = Reader::new(shared, inbound, register, gone);
        let mut open = Vec::new();
        for id in 1..=i64::from(streams.min(8)) {
            let stream = Stream::new(id, core.clone(), Some(4096), Some(4096));
            reader.add(stream.clone());
            open.push(stream);
        }
        for frame in frames {
            if reader.on_frame(frame).is_err() {
                break;
            }
            consume(&open);
        }
        consume(&open);
        for frame in drain(&mut writer).into_iter().flatten() {
            assert!(
                (1..=i64::from(streams)).contains(&frame.stream_id),
                "client wrote a frame for stream {}",
                frame.stream_id
            );
        }
    });
}

/// Takes every queued event of every stream; an end is the last event.
fn consume(streams: &[Arc<Stream<pb::ClientToServer>>]) {
    let mut cx = Context::from_waker(Waker::noop());
    for stream in streams {
        let mut ended = false;
        while let Poll::Ready(event) = stream.poll_event(&mut cx) {
            assert!(!ended, "event after the end of stream {}", stream.id());
            ended = matches!(event, Event::End(_) | Event::Fail(_));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn metadata() -> impl Strategy<Value = Option<pb::Metadata>> {
        proptest::option::of(
            proptest::collection::hash_map(
                "[a-z-]{1,8}",
                proptest::collection::vec(".{0,40}", 0..3),
                0..3,
            )
            .prop_map(|md| pb::Metadata {
                md: md
                    .into_iter()
                    .map(|(k, val)| (k, pb::metadata::Values { val }))
                    .collect(),
            }),
        )
    }

    fn data() -> impl Strategy<Value = Bytes> {
        (0usize..6000).prop_map(|n| Bytes::from(vec![7u8; n]))
    }

    fn client_frame() -> impl Strategy<Value = pb::ClientToServer> {
        use pb::client_to_server::Frame as F;
        let method = prop_oneof![
            Just("/grpctunnel.testing.v1.EchoService/Unary".to_owned()),
            Just("grpctunnel.testing.v1.EchoService/Bidi".to_owned()),
            Just(String::new()),
            Just("/".to_owned()),
            Just("x".to_owned()),
            Just("//a".to_owned()),
        ];
        let frame = prop_oneof![
            (method, metadata(), 0u32..9000, 0i32..3).prop_map(|(m, md, w, r)| Some(F::NewStream(
                pb::NewStream {
                    method_name: m,
                    request_headers: md,
                    initial_window_size: w,
                    protocol_revision: if r == 2 { 7 } else { r },
                }
            ))),
            (0u32..20000, data())
                .prop_map(|(size, data)| Some(F::RequestMessage(pb::MessageData { size, data }))),
            data().prop_map(|d| Some(F::MoreRequestData(d))),
            Just(Some(F::HalfClose(()))),
            Just(Some(F::Cancel(()))),
            any::<u32>().prop_map(|n| Some(F::WindowUpdate(n))),
            Just(None),
        ];
        (-2i64..7, frame).prop_map(|(stream_id, frame)| pb::ClientToServer { stream_id, frame })
    }

    fn server_frame() -> impl Strategy<Value = pb::ServerToClient> {
        use pb::server_to_client::Frame as F;
        let frame = prop_oneof![
            metadata().prop_map(|md| Some(F::ResponseHeaders(md.unwrap_or_default()))),
            (0u32..20000, data())
                .prop_map(|(size, data)| Some(F::ResponseMessage(pb::MessageData { size, data }))),
            data().prop_map(|d| Some(F::MoreResponseData(d))),
            (metadata(), 0i32..20).prop_map(|(md, code)| Some(F::CloseStream(pb::CloseStream {
                response_trailers: md,
                status: Some(tonic_types::Status {
                    code,
                    message: "x".into(),
                    details: vec![],
                }),
            }))),
            Just(Some(F::Settings(pb::Settings::default()))),
            any::<u32>().prop_map(|n| Some(F::WindowUpdate(n))),
            Just(None),
        ];
        (-2i64..7, frame).prop_map(|(stream_id, frame)| pb::ServerToClient { stream_id, frame })
    }

    /// Runs `f` on a thread of its own and fails if it has not returned
    /// within 10 s: a task that never goes idle keeps the harness's settle
    /// from ending (the fuzzer reports the same as a timeout).
    fn without_hang(f: impl FnOnce() + Send + 'static) {
        within(std::time::Duration::from_secs(10), f);
    }

    fn within(limit: std::time::Duration, f: impl FnOnce() + Send + 'static) {
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        match ended.recv_timeout(limit) {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("hung: a task never went idle within {limit:?}"),
        }
    }

    #[test]
    fn a_task_that_never_idles_is_reported_as_a_hang() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let hung = std::panic::catch_unwind(|| {
            within(std::time::Duration::from_millis(500), move || {
                run(async move {
                    tokio::spawn(async move {
                        while !spinning.load(Ordering::Relaxed) {
                            tokio::task::yield_now().await;
                        }
                    });
                    settle().await;
                })
            })
        });
        // The spinning task may end now, and its thread with it.
        stop.store(true, Ordering::Relaxed);
        let panic = hung.expect_err("reported");
        let text = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(text.contains("hung"), "{text}");
    }

    #[test]
    fn a_task_left_waiting_is_reported_as_outliving_its_tunnel() {
        let left = std::panic::catch_unwind(|| {
            run(async {
                tokio::spawn(std::future::pending::<()>());
            })
        });
        let panic = left.expect_err("reported");
        let text = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(text.contains("outlived"), "{text}");
    }

    #[test]
    fn harness_serves_a_well_formed_call() {
        use pb::client_to_server::Frame as F;
        let frame = |f| pb::ClientToServer {
            stream_id: 1,
            frame: Some(f),
        };
        let out = server_frames(vec![
            frame(F::NewStream(pb::NewStream {
                method_name: "/a.B/C".into(),
                request_headers: None,
                initial_window_size: 4096,
                protocol_revision: 1,
            })),
            frame(F::RequestMessage(pb::MessageData {
                size: 3,
                data: Bytes::from_static(b"abc"),
            })),
            frame(F::HalfClose(())),
        ]);
        let kinds: Vec<_> = out.iter().map(|f| OutFrame::describe(f).0).collect();
        assert_eq!(
            kinds,
            ["response_headers", "response_message", "close_stream"],
            "{out:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// No sequence of frames makes the tunnel server panic, hang, or
        /// write out of order.
        #[test]
        fn server_survives_any_frame_sequence(frames in proptest::collection::vec(client_frame(), 0..40)) {
            without_hang(move || {
                let _ = server_frames(frames);
            });
        }

        /// No sequence of frames makes the tunnel client panic or deliver
        /// events after a stream's end.
        #[test]
        fn client_survives_any_frame_sequence(
            streams in 0u8..5,
            frames in proptest::collection::vec(server_frame(), 0..40),
        ) {
            without_hang(move || client_frames(streams, frames));
        }
    }
}
