//! Fuzzes the frame handling of both roles: the input is a role byte, then
//! frames as (u16 length, protobuf bytes) pairs; frames that do not decode
//! are skipped, the rest are fed to the tunnel server or the tunnel client.
#![no_main]

use grpctunnel::{fuzzing, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn frames<M: Message + Default>(mut data: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        data = &data[2..];
        let (frame, rest) = data.split_at(len.min(data.len()));
        data = rest;
        if let Ok(frame) = M::decode(frame) {
            out.push(frame);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, rest)) = data.split_first() else {
        return;
    };
    if role % 2 == 0 {
        let _ = fuzzing::server_frames(frames::<pb::ClientToServer>(rest));
    } else {
        fuzzing::client_frames(role / 2 % 6, frames::<pb::ServerToClient>(rest));
    }
});
