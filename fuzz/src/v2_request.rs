//! kv-protocol's server side on arbitrary input: the encapsulated request (header, HPKE), and,
//! for the same bytes taken as a decrypted plaintext, the framing and the CBOR request schema.
//!
//! Invariants: nothing panics; a request that decodes re-encodes to CBOR that decodes to the same
//! request; an error message never contains a decoded string (checked with a marker the input
//! may carry).

use std::sync::OnceLock;

use kv_server::kv_protocol::keys::KeyPair;
use kv_server::kv_protocol::{cbor, framing, server};

static KEY: OnceLock<KeyPair> = OnceLock::new();

pub fn run(data: &[u8]) {
    let key = KEY.get_or_init(|| KeyPair::generate(1).expect("the OS random number generator"));
    let _ = server::decrypt_request(|id| (id == key.id).then_some(&key.secret), data);
    let Ok(payload) = framing::unframe_request(data) else {
        return;
    };
    match cbor::decode_request(payload) {
        Ok(request) => {
            let again = cbor::encode_request(&request).expect("a decoded request encodes");
            assert_eq!(cbor::decode_request(&again).expect("re-encoded CBOR decodes"), request);
        }
        Err(e) => assert!(!e.to_string().contains("FUZZSECRET"), "{e}"),
    }
}
