//! Soak: concurrent workers run every kind of call through forward and
//! reverse tunnels while calls are cancelled midway and tunnels are closed,
//! cut and reopened. Every message carries a sequence number (and a
//! payload derived from it) that the other end checks: no message may be
//! lost, duplicated, reordered or altered on a call, and every call that
//! fails must fail with a code that its fault explains.
//!
//! Loopback only; `GRPCTUNNEL_SOAK_SECS` sets the length (default 3 s).

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{proxy::Proxy, *};
use grpctunnel::{
    reverse::{Backoff, KeepConnected, ReverseTunnelRegistry},
    ReverseTunnelServer, TunnelChannel, TunnelLayer,
};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    service::Routes,
    transport::{Channel, Endpoint},
    Code, Status,
};

type Registry = ReverseTunnelRegistry<String>;

/// How often a fault is injected (a tunnel closed or the connections cut).
const FAULT_EVERY: Duration = Duration::from_millis(150);
const FORWARD_WORKERS: u64 = 6;
const REVERSE_WORKERS: u64 = 4;
const FORWARD_TUNNELS: usize = 2;
const AGENTS: usize = 2;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Unary,
    ClientStream,
    ServerStream,
    Bidi,
    HalfDuplex,
}

const KINDS: [Kind; 5] = [
    Kind::Unary,
    Kind::ClientStream,
    Kind::ServerStream,
    Kind::Bidi,
    Kind::HalfDuplex,
];

/// Payload of message `seq`: its number, repeated 1 to 5 times.
fn payload(seq: u64) -> Bytes {
    seq.to_le_bytes().repeat(1 + (seq % 5) as usize).into()
}

fn request(seq: u64) -> EchoRequest {
    EchoRequest {
        seq,
        payload: payload(seq),
        ..Default::default()
    }
}

/// A small xorshift generator; each worker has its own seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Totals {
    calls: AtomicU64,
    ok: AtomicU64,
    ok_forward: AtomicU64,
    ok_reverse: AtomicU64,
    sent: AtomicU64,
    ok_responses: AtomicU64,
    received: AtomicU64,
    cancelled: AtomicU64,
    cut: AtomicU64,
    restarts: AtomicU64,
    cuts: AtomicU64,
    codes: Mutex<BTreeMap<String, u64>>,
    violations: Mutex<Vec<String>>,
}

impl Totals {
    fn violation(&self, what: String) {
        let mut v = self.violations.lock().unwrap();
        if v.len() < 50 {
            v.push(what);
        }
    }

    fn count_code(&self, status: &Status) {
        let key = format!("{:?}", status.code());
        *self.codes.lock().unwrap().entry(key).or_default() += 1;
    }
}

enum Outcome {
    Ok,
    /// Dropped midway on purpose.
    Cancelled,
    Failed(Status),
    /// A message was wrong (recorded already).
    Broken,
}

/// Checks response `i` of a call against what it must be.
fn check(
    totals: &Totals,
    what: &str,
    i: u64,
    got: &grpctunnel_testing::pb::EchoResponse,
    seq: u64,
    count: u32,
    payload_of: u64,
) -> bool {
    totals.received.fetch_add(1, Relaxed);
    if got.seq != seq || got.count != count || got.payload != payload(payload_of) {
        totals.violation(format!(
            "{what}: response {i} has seq {} count {} ({} B), expected seq {seq} count {count}",
            got.seq,
            got.count,
            got.payload.len()
        ));
        return false;
    }
    true
}

/// One call of `kind` with `n` messages numbered from `base`; dropped after
/// `cancel_after` responses when set (streaming responses only).
async fn one_call<T>(
    client: &mut EchoServiceClient<T>,
    kind: Kind,
    base: u64,
    n: u64,
    cancel_after: Option<u64>,
    totals: &Totals,
) -> Outcome
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let what = format!("{kind:?} from seq {base}");
    match kind {
        Kind::Unary => match client.unary(request(base)).await {
            Ok(resp) if check(totals, &what, 0, resp.get_ref(), base, 1, base) => Outcome::Ok,
            Ok(_) => Outcome::Broken,
            Err(status) => Outcome::Failed(status),
        },
        Kind::ClientStream => {
            let reqs = tokio_stream::iter((base..base + n).map(request));
            let resp = match client.client_stream(reqs).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => return Outcome::Failed(status),
            };
            let total: u64 = (base..base + n).map(|s| payload(s).len() as u64).sum();
            let last = base + n - 1;
            if !check(totals, &what, 0, &resp, last, n as u32, last) || resp.total_bytes != total {
                totals.violation(format!(
                    "{what}: {} B arrived, {total} B sent",
                    resp.total_bytes
                ));
                return Outcome::Broken;
            }
            Outcome::Ok
        }
        Kind::ServerStream | Kind::Bidi | Kind::HalfDuplex => {
            let half = matches!(kind, Kind::HalfDuplex);
            let mut answers = if let Kind::ServerStream = kind {
                let req = EchoRequest {
                    repeat: n as u32,
                    ..request(base)
                };
                match client.server_stream(req).await {
                    Ok(resp) => resp.into_inner(),
                    Err(status) => return Outcome::Failed(status),
                }
            } else {
                let (tx, rx) = mpsc::channel(n as usize);
                for seq in base..base + n {
                    let req = EchoRequest {
                        half_duplex: half,
                        ..request(seq)
                    };
                    tx.try_send(req).expect("room for every request");
                }
                drop(tx);
                match client.bidi(ReceiverStream::new(rx)).await {
                    Ok(resp) => resp.into_inner(),
                    Err(status) => return Outcome::Failed(status),
                }
            };
            for i in 0..n {
                if cancel_after == Some(i) {
                    return Outcome::Cancelled;
                }
                let got = match answers.message().await {
                    Ok(Some(got)) => got,
                    Ok(None) => {
                        totals.violation(format!("{what}: ended OK after {i} of {n} responses"));
                        return Outcome::Broken;
                    }
                    Err(status) => return Outcome::Failed(status),
                };
                let (count, payload_of) = match kind {
                    Kind::ServerStream => (1, base),
                    Kind::HalfDuplex => (n as u32, base + i),
                    _ => (i as u32 + 1, base + i),
                };
                if !check(totals, &what, i, &got, base + i, count, payload_of) {
                    return Outcome::Broken;
                }
            }
            match answers.message().await {
                Ok(None) => Outcome::Ok,
                Ok(Some(extra)) => {
                    totals.violation(format!("{what}: extra response seq {}", extra.seq));
                    Outcome::Broken
                }
                Err(status) => Outcome::Failed(status),
            }
        }
    }
}

/// Runs calls until `until`; `pick` gives the client of each call, and
/// after a failed call `recovered` waits until calls can go through again
/// (a fresh tunnel in the slot, an agent back in the registry) so that a
/// worker does not spin on a dead tunnel.
async fn worker<T, F, W, Fut>(
    id: u64,
    until: Instant,
    seqs: Arc<AtomicU64>,
    totals: Arc<Totals>,
    reverse: bool,
    pick: F,
    recovered: W,
) where
    F: Fn() -> EchoServiceClient<T>,
    W: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    while Instant::now() < until {
        let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
        let n = 1 + rng.below(20);
        let base = seqs.fetch_add(n, Relaxed);
        let streaming = matches!(kind, Kind::ServerStream | Kind::Bidi | Kind::HalfDuplex);
        let cancel_after = (streaming && rng.below(8) == 0).then(|| rng.below(n));
        totals.calls.fetch_add(1, Relaxed);
        let mut client = pick();
        match one_call(&mut client, kind, base, n, cancel_after, &totals).await {
            Outcome::Ok => {
                totals.ok.fetch_add(1, Relaxed);
                let side = if reverse {
                    &totals.ok_reverse
                } else {
                    &totals.ok_forward
                };
                side.fetch_add(1, Relaxed);
                let (requests, responses) = match kind {
                    Kind::Unary => (1, 1),
                    Kind::ClientStream => (n, 1),
                    Kind::ServerStream => (1, n),
                    Kind::Bidi | Kind::HalfDuplex => (n, n),
                };
                totals.sent.fetch_add(requests, Relaxed);
                totals.ok_responses.fetch_add(responses, Relaxed);
            }
            Outcome::Cancelled => {
                totals.cancelled.fetch_add(1, Relaxed);
            }
            Outcome::Broken => {}
            Outcome::Failed(status) => {
                totals.count_code(&status);
                match status.code() {
                    // Cut by a fault: a tunnel closed or a connection reset.
                    Code::Unavailable | Code::Cancelled => {
                        totals.cut.fetch_add(1, Relaxed);
                    }
                    _ => totals.violation(format!("{kind:?} from seq {base} failed: {status:?}")),
                }
                let _ = tokio::time::timeout_at(until, recovered()).await;
            }
        }
        // A call that fails at once never returns Pending: let others run.
        tokio::task::yield_now().await;
    }
}

/// Opens a forward tunnel over `transport`, which may be reconnecting
/// after a cut: a bounded number of attempts, each one an RPC.
async fn reopen(transport: &Channel) -> TunnelChannel {
    let mut last = None;
    for _ in 0..200 {
        match TunnelChannel::builder().open(transport.clone()).await {
            Ok(tunnel) => return tunnel,
            Err(err) => last = Some(err),
        }
        tokio::task::yield_now().await;
    }
    panic!("could not reopen a forward tunnel: {last:?}");
}

fn agent(i: usize, url: String) -> KeepConnected {
    ReverseTunnelServer::new(Routes::new(Echo::new().server()))
        .metadata("x-agent-key", &format!("agent-{i}"))
        .keep_connected_with(
            Endpoint::from_shared(url).unwrap().connect_lazy(),
            Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(50),
                ..Default::default()
            },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_forward_and_reverse_with_cancels_and_restarts() {
    let secs: u64 = std::env::var("GRPCTUNNEL_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    bounded_for(Duration::from_secs(secs + 60), async {
        let registry: Registry = keyed_registry();
        let layer = TunnelLayer::new().reverse(registry.clone());
        let server = tonic_server(layer.clone(), Echo::new()).await;
        // Everything goes through the proxy, so that a cut hits forward
        // tunnels and agents alike.
        let proxy = Proxy::start(server.addr).await;
        let transport = Endpoint::from_shared(proxy.url()).unwrap().connect_lazy();
        let mut first = Vec::new();
        for _ in 0..FORWARD_TUNNELS {
            first.push(reopen(&transport).await);
        }
        let slots = watch::Sender::new(first);
        let agents: Vec<KeepConnected> = (0..AGENTS).map(|i| agent(i, proxy.url())).collect();
        for a in &agents {
            a.wait_until(|s| s.connected).await;
        }

        let totals = Arc::new(Totals::default());
        let seqs = Arc::new(AtomicU64::new(1));
        let until = Instant::now() + Duration::from_secs(secs);
        let mut workers = Vec::new();
        for id in 0..FORWARD_WORKERS {
            let k = id as usize % FORWARD_TUNNELS;
            let rx = slots.subscribe();
            let pick = move || EchoServiceClient::new(rx.borrow()[k].clone());
            let rx = slots.subscribe();
            let recovered = move || {
                let mut rx = rx.clone();
                async move {
                    let _ = rx.wait_for(|tunnels| !tunnels[k].is_closed()).await;
                }
            };
            let (seqs, totals) = (seqs.clone(), totals.clone());
            workers.push(tokio::spawn(worker(
                id, until, seqs, totals, false, pick, recovered,
            )));
        }
        for id in 0..REVERSE_WORKERS {
            let r = registry.clone();
            let pick = move || EchoServiceClient::new(r.channel());
            let r = registry.clone();
            let recovered = move || {
                let r = r.clone();
                async move {
                    r.wait_for(None).await;
                }
            };
            let (seqs, totals) = (seqs.clone(), totals.clone());
            workers.push(tokio::spawn(worker(
                100 + id,
                until,
                seqs,
                totals,
                true,
                pick,
                recovered,
            )));
        }

        // Faults, in turn: close a forward tunnel, cut every connection,
        // close a reverse tunnel from the hub. A new forward tunnel takes
        // the slot before the old one is closed. The interval paces the
        // faults; it synchronizes nothing.
        let mut tick = tokio::time::interval(FAULT_EVERY);
        tick.tick().await;
        let mut round = 0usize;
        while Instant::now() < until {
            tick.tick().await;
            match round % 3 {
                0 => {
                    let fresh = reopen(&transport).await;
                    let k = (round / 3) % FORWARD_TUNNELS;
                    let old = slots.send_modify_with(k, fresh);
                    old.close();
                    totals.restarts.fetch_add(1, Relaxed);
                }
                1 => {
                    proxy.kill().await;
                    totals.cuts.fetch_add(1, Relaxed);
                    let mut fresh = Vec::new();
                    for _ in 0..FORWARD_TUNNELS {
                        fresh.push(reopen(&transport).await);
                    }
                    slots.send_replace(fresh);
                }
                _ => {
                    if let Some(t) = registry.tunnels().first() {
                        t.channel().close();
                        totals.restarts.fetch_add(1, Relaxed);
                    }
                }
            }
            round += 1;
        }
        for w in workers {
            w.await.expect("worker");
        }

        let reverse_opened: u64 = agents.iter().map(|a| a.state().tunnels_opened).sum();
        for a in agents {
            a.shutdown().await;
        }
        for t in slots.borrow().iter() {
            t.close();
        }
        proxy.kill().await;
        let t = &totals;
        let codes = t.codes.lock().unwrap().clone();
        println!(
            "soak {secs} s: {} calls, {} OK ({} forward, {} reverse), {} cancelled midway, \
             {} cut by faults\n\
             messages on calls that completed OK: {} requests, {} responses; \
             {} responses checked in all\n\
             faults: {} tunnel restarts, {} connection cuts; {} reverse tunnels opened in all\n\
             failure codes: {codes:?}\nserver: {}",
            t.calls.load(Relaxed),
            t.ok.load(Relaxed),
            t.ok_forward.load(Relaxed),
            t.ok_reverse.load(Relaxed),
            t.cancelled.load(Relaxed),
            t.cut.load(Relaxed),
            t.sent.load(Relaxed),
            t.ok_responses.load(Relaxed),
            t.received.load(Relaxed),
            t.restarts.load(Relaxed),
            t.cuts.load(Relaxed),
            reverse_opened,
            layer.stats(),
        );
        let violations = t.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "{} violations: {violations:#?}",
            violations.len()
        );
        assert!(
            t.ok_forward.load(Relaxed) > 50 && t.ok_reverse.load(Relaxed) > 50,
            "too little traffic"
        );
        assert!(t.cancelled.load(Relaxed) > 0, "no call was cancelled");
        assert!(
            t.restarts.load(Relaxed) > 0 && t.cuts.load(Relaxed) > 0,
            "no fault injected"
        );
        assert!(reverse_opened > AGENTS as u64, "agents never reconnected");
        server.stop().await;
    })
    .await
}

/// Replaces one tunnel of the slots and hands back the one it replaced.
trait ReplaceSlot {
    fn send_modify_with(&self, k: usize, fresh: TunnelChannel) -> TunnelChannel;
}

impl ReplaceSlot for watch::Sender<Vec<TunnelChannel>> {
    fn send_modify_with(&self, k: usize, fresh: TunnelChannel) -> TunnelChannel {
        let mut old = None;
        self.send_modify(|tunnels| old = Some(std::mem::replace(&mut tunnels[k], fresh)));
        old.expect("replaced")
    }
}
