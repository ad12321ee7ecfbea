//! Fuzzes the agent protocol decoder: `AgentMessage::decode` (what the server runs on every
//! frame an agent sends) and `ServerMessage::decode` (what the agent runs on every frame the
//! server sends). Nothing may panic, and every frame that decodes must survive
//! encode → decode unchanged, with a stable encoding.
//!
//! Only valid UTF-8 is fed to the decoders: both sides decode WebSocket *text* frames only, and
//! tungstenite has already rejected a text frame that is not UTF-8 before `decode(&str)` is
//! called, so that is the exact input domain. (A lossy conversion would only feed the decoder
//! U+FFFD replacements the fuzzer can produce anyway, and would map many inputs to one.)

#![no_main]

use fleetrun::protocol::agent::{AgentMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(msg) = AgentMessage::decode(text) {
        let encoded = msg.encode();
        let again = AgentMessage::decode(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded agent message does not decode: {e}\n{encoded}"));
        assert_eq!(again, msg, "agent message changed on round trip via {encoded}");
        assert_eq!(again.encode(), encoded, "agent message encoding is not stable");
    }

    if let Ok(msg) = ServerMessage::decode(text) {
        let encoded = msg.encode();
        let again = ServerMessage::decode(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded server message does not decode: {e}\n{encoded}"));
        assert_eq!(again, msg, "server message changed on round trip via {encoded}");
        assert_eq!(again.encode(), encoded, "server message encoding is not stable");
    }
});
