//! SOCKS5 greeting parser on arbitrary bytes: no panic, and a parsed greeting re-encodes to the
//! bytes it was parsed from.

use transport::socks5::{encode_greeting, parse_greeting};

pub fn run(data: &[u8]) {
    if let Ok(Some((greeting, used))) = parse_greeting(data) {
        assert!(used <= data.len());
        let encoded = encode_greeting(&greeting.methods).expect("a parsed greeting always re-encodes");
        assert_eq!(&encoded[..], &data[..used]);
    }
}
