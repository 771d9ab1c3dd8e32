//! SOCKS5 greeting parser on arbitrary bytes: no panic, and a parsed greeting re-encodes to the
//! bytes it was parsed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::socks5::{encode_greeting, parse_greeting};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((greeting, used))) = parse_greeting(data) {
        assert!(used <= data.len());
        let encoded = encode_greeting(&greeting.methods).expect("a parsed greeting always re-encodes");
        assert_eq!(&encoded[..], &data[..used]);
    }
});
