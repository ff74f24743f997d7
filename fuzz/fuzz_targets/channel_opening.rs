//! The backup's side of a logging channel's opening fed arbitrary bytes
//! from an unauthenticated peer, in both modes: it must refuse or wait,
//! never panic, never grow past one frame of input, and never let anything
//! attach under a key the input cannot know.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logchan::secure::{PairKey, Responder, Security, Step};

fuzz_target!(|data: &[u8]| {
    for security in [
        Security::Insecure,
        Security::Key(PairKey::from_bytes([7; 32])),
    ] {
        let keyed = matches!(security, Security::Key(_));
        let mut r = Responder::new(security);
        // In pieces, as a socket delivers them.
        for piece in data.chunks(97) {
            if r.input(piece).is_err() {
                break;
            }
            match r.advance() {
                // Random bytes cannot hold a Noise message under the key.
                Ok(Step::Attach(_)) => assert!(!keyed, "attached under a key"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
});
