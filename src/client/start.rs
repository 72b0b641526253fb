//! Starting a tunnel client on an opened tunnel, whichever end dialled:
//! the forward [`TunnelChannelBuilder`](crate::TunnelChannelBuilder) and the
//! network server of a reverse tunnel both end here.

use std::sync::Arc;

use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tracing::{debug, warn, Instrument};

use crate::{
    client::{reader::Reader, shared::Shared, TunnelChannel},
    engine::{trace, writer::Core},
    error::Error,
    info::Direction,
    pb,
    wire::settings::{self, Options, Revision},
};

/// Starts the client engine on an opened tunnel: validates `Settings` when
/// negotiated (P-13, P-14), then spawns the reader. `extended`: both ends
/// agreed to carry `-bin` metadata as base64.
pub(crate) async fn start_client<S>(
    core: Arc<Core<pb::ClientToServer>>,
    gone: tokio::sync::mpsc::UnboundedReceiver<i64>,
    mut inbound: S,
    negotiated: bool,
    extended: bool,
    opts: Options,
    direction: Direction,
) -> Result<TunnelChannel, Error>
where
    S: FuturesStream<Item = Result<pb::ServerToClient, tonic::Status>> + Unpin + Send + 'static,
{
    let (revision, send_window) = if negotiated {
        let first = match tokio::time::timeout(opts.settings_timeout, inbound.next()).await {
            Err(_) => {
                let status = tonic::Status::deadline_exceeded(format!(
                    "no Settings from the peer within {:?} (settings_timeout)",
                    opts.settings_timeout
                ));
                core.finish(Some(status.clone()));
                core.meter.tunnel_closed();
                return Err(Error::negotiation(status));
            }
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(status))) => {
                core.finish(None);
                return Err(Error::negotiation(status));
            }
            Ok(None) => {
                core.finish(None);
                return Err(Error::negotiation(tonic::Status::unavailable(
                    "failed to read settings from server: tunnel ended",
                )));
            }
        };
        match settings::accept_settings(first, &opts) {
            Ok(chosen) => chosen,
            Err(text) => {
                // P-22: a reverse tunnel's response ends UNKNOWN with it.
                core.finish(Some(tonic::Status::unknown(text.clone())));
                core.meter.protocol_error();
                core.meter.tunnel_closed();
                return Err(Error::protocol(text));
            }
        }
    } else {
        if opts.advertises() {
            warn!("peer did not negotiate: using protocol revision 0");
        }
        (Revision::Zero, 0)
    };
    let span = tracing::Span::current();
    trace::record_revision(&span, revision);
    debug!(%revision, "tunnel open");
    let bin = opts.bin(extended);
    let (shared, register) = Shared::new(core, opts, revision, send_window, bin, direction, span);
    let reader = Reader::new(shared.clone(), inbound, register, gone);
    tokio::spawn(reader.run().in_current_span());
    Ok(TunnelChannel::from_shared(shared))
}
