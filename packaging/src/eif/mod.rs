//! The Enclave Image File: format, writer, reader, PCRs, metadata and the signature section.

pub mod format;
pub mod metadata;
pub mod pcr;
pub mod reader;
pub mod signature;
pub mod writer;

pub use format::SectionKind;
pub use pcr::Measurements;
pub use reader::{Description, ReadError, describe, describe_reader};
pub use writer::{EifWriter, WriteError};
