//! The client's side: encrypt a request to a server's public key, decrypt its response.
//!
//! ```
//! use kv_protocol::{client, framing, keys::KeyPair, server};
//!
//! let server_key = KeyPair::generate(7)?; // what GET /v2/keys publishes
//! let framed = framing::frame_request(b"CBOR request")?;
//! let (message, context) = client::encrypt_request(7, &server_key.public, &framed)?;
//!
//! // ... POST `message` to /v2/oblivious_getvalues; on the server:
//! let (request, server_context) =
//!     server::decrypt_request(|id| (id == 7).then_some(&server_key.secret), &message)?;
//! let response = server_context.encrypt_response(&request)?;
//!
//! assert_eq!(context.decrypt_response(&response)?, framed);
//! # Ok::<(), kv_protocol::ProtocolError>(())
//! ```

use crate::ProtocolError;
use crate::encapsulation::{self, Draft, Sender};
use crate::keys::PublicKey;

/// What the client keeps to decrypt the response to one request (the HPKE sending context).
pub struct ClientContext(Sender<Draft>);

impl std::fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientContext(..)")
    }
}

/// Encapsulates `plaintext` (a framed request, [`crate::framing::frame_request`]) for the key
/// `key_id` whose public key is `public_key`: `key id || KEM || KDF || AEAD || enc || ciphertext`.
pub fn encrypt_request(
    key_id: u8,
    public_key: &PublicKey,
    plaintext: &[u8],
) -> Result<(Vec<u8>, ClientContext), ProtocolError> {
    let (message, sender) = encapsulation::seal_request::<Draft>(key_id, public_key, plaintext)?;
    Ok((message, ClientContext(sender)))
}

impl ClientContext {
    /// Decrypts the encapsulated response (`response nonce || ciphertext`) to the framed response.
    pub fn decrypt_response(&self, response: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        self.0.open_response(response)
    }
}
