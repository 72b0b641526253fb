//! Serving an accepted `OpenTunnel`: the network server is the tunnel
//! server. Sends `Settings` first when negotiated (P-11), then runs the
//! reader until the tunnel ends and ends the opening RPC with its outcome.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::{
    engine::{
        accept::Accepted,
        trace::{self, Role},
    },
    info::Direction,
    pb,
    server::{
        dispatch::Dispatch,
        reader::{Ending, ServerTunnel, TunnelContext},
    },
    wire::{
        frame,
        settings::{Options, Revision},
    },
};

/// Spawns the tunnel server of an accepted `OpenTunnel`.
pub(crate) fn serve_tunnel(
    tunnel: Accepted<pb::ClientToServer>,
    opts: Options,
    dispatch: Dispatch,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let (core, negotiated) = (tunnel.core, tunnel.negotiated);
    if negotiated {
        // P-11: Settings is the first ServerToClient frame.
        core.send_control(frame::settings(opts.settings()));
    }
    let peer = trace::peer_addr(&tunnel.extensions);
    let span = trace::tunnel_span(Direction::Forward, Role::Server, peer);
    let revision = if negotiated {
        opts.max_revision
    } else {
        Revision::Zero
    };
    trace::record_revision(&span, revision);
    let cx = TunnelContext {
        opts,
        dispatch,
        extensions: tunnel.extensions,
        metadata: Arc::new(tunnel.headers),
        direction: Direction::Forward,
        bin: opts.bin(tunnel.extended),
        authority: tunnel.authority,
    };
    let reader = ServerTunnel::new(cx, core.clone(), tunnel.gone, tunnel.inbound)
        .with_shutdown(shutdown, grace);
    tokio::spawn(
        async move {
            debug!("tunnel open");
            let (ending, _inbound) = reader.run().await;
            let status = match ending {
                // P-67: the client's end of input ends the RPC with OK.
                Ending::Closed | Ending::Drained | Ending::Aborted => None,
                // The opening RPC broke (an undecodable frame, say): it ends
                // with that status, not OK (P-6, P-22).
                Ending::Broken(status) => Some(status),
                // P-22: a fatal error ends the RPC with UNKNOWN and its text.
                Ending::Protocol(text) => Some(tonic::Status::unknown(text)),
            };
            debug!("tunnel closed");
            core.meter.tunnel_closed();
            core.finish(status);
        }
        .instrument(span),
    );
}
