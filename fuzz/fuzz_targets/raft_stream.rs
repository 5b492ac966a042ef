//! A raft stream as a stranger may open one: the preface, then frames
//! (hellos among them), decoded as `RaftStreamServer`'s reader does.
//! Nothing may panic; memory follows what arrives (libFuzzer's
//! -malloc_limit_mb catches an allocation sized by a claimed length).

#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkit_node::transport::stream::{decode_hello, read_frame, read_preface, HELLO_GROUP};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if read_preface(&mut r).is_err() {
        return;
    }
    let mut buf = Vec::new();
    // A stream's frames until it ends or is malformed (the reader then
    // closes the connection).
    while let Ok(Some(frame)) = read_frame(&mut r, &mut buf) {
        if frame.group == HELLO_GROUP {
            let _ = decode_hello(&frame.msg);
        }
    }
});
