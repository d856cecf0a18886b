//! The central system's frame decoder on arbitrary bytes: a stream of frames
//! as a host (or anyone on the network) could send them. Every prefix must
//! decode to a frame or a precise error, and every frame that decodes must
//! encode back to the same bytes.

#![no_main]

use imprint_central::wire::{Frame, read_frame};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while !stream.is_empty() {
        let before = stream;
        match read_frame(&mut stream) {
            Ok(frame) => {
                let consumed = before.len() - stream.len();
                // ERROR reasons are decoded lossily; every other frame is exact.
                if !matches!(frame, Frame::Error { .. }) {
                    assert_eq!(frame.encode(), before[..consumed]);
                }
            }
            Err(_) => break,
        }
    }
});
