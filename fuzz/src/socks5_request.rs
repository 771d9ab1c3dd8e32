//! SOCKS5 request and reply parsers on arbitrary bytes: no panic, a consumed length within the
//! input, and a parsed request re-encodes to the exact bytes it was parsed from.

use transport::socks5::{encode_request, parse_reply, parse_request};

pub fn run(data: &[u8]) {
    if let Ok(Some((request, used))) = parse_request(data) {
        assert!(used <= data.len());
        let encoded = encode_request(&request).expect("a parsed request always re-encodes");
        assert_eq!(&encoded[..], &data[..used]);
        // Every proper prefix of a valid request asks for more bytes.
        for cut in 0..used {
            assert_eq!(parse_request(&data[..cut]), Ok(None));
        }
    }
    if let Ok(Some((_, used))) = parse_reply(data) {
        assert!(used <= data.len());
    }
}
