//! Stockade's trust in plugin packages: Ed25519 keys and their files ([`key`]), the signed
//! statement of a package's contents ([`statement`]), reading a package once into a sealed copy
//! ([`snapshot`]), the decision who signed what and what it may run as ([`keyring`]), key
//! rotation ([`rotation`]), the operator's encrypted trust list ([`trustlist`]) and the rollback
//! ratchet ([`ratchet`]). Nothing here is hand-rolled cryptography: Ed25519 is
//! ed25519-dalek, SHA3-512 is sha3, XChaCha20-Poly1305 is chacha20poly1305, Argon2id is argon2.

pub mod hex;
pub mod key;
pub mod keyring;
pub mod ratchet;
pub mod rotation;
pub mod snapshot;
pub mod statement;
pub mod trustlist;
