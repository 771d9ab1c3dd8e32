//! kv-server: the key-value server that runs inside the Nitro Enclave.
