//! A mux stream's frames after its preface, as the node's mux reader (and
//! the client's, for replies) decodes them. Nothing may panic; memory
//! follows what arrives.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use raftkit_proto::mux::read_frame;
use raftkit_proto::pb::{MuxReply, MuxRequest};

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut r = data;
        let mut buf = Vec::new();
        while let Ok(true) = read_frame(&mut r, &mut buf).await {
            let _ = MuxRequest::decode(&buf[..]);
            if let Ok(reply) = MuxReply::decode(&buf[..]) {
                let _ = raftkit_proto::mux::into_result(reply);
            }
        }
    });
});
