//! `enclave.v1.Attestation/GetAttestationDocument`: the NSM attestation document for the caller's
//! nonce, public key and user data.
//!
//! The document comes only from the Nitro Secure Module (`/dev/nsm`, through
//! aws-nitro-enclaves-nsm-api). Without that device (any machine that is not a Nitro Enclave) the
//! call fails with FAILED_PRECONDITION: a document is never made up, cached or replayed.

use aws_nitro_enclaves_nsm_api::api::{Request as NsmRequest, Response as NsmResponse};
use aws_nitro_enclaves_nsm_api::driver;
use serde_bytes::ByteBuf;
use tonic::{Request, Response, Status};

use crate::proto::enclave::v1::attestation_server::{Attestation, AttestationServer};
use crate::proto::enclave::v1::{GetAttestationDocumentRequest, GetAttestationDocumentResponse};

/// Limits of the NSM for each field (larger inputs are refused by the module).
pub const MAX_NONCE: usize = 512;
pub const MAX_USER_DATA: usize = 512;
pub const MAX_PUBLIC_KEY: usize = 1024;

pub const NSM_DEVICE: &str = "/dev/nsm";
pub const NO_NSM: &str = "no NSM device (/dev/nsm): not running in a Nitro Enclave";

#[derive(Debug, Default)]
pub struct AttestationService;

impl AttestationService {
    pub fn into_service(self) -> AttestationServer<AttestationService> {
        AttestationServer::new(self)
    }
}

fn optional(bytes: Vec<u8>) -> Option<ByteBuf> {
    (!bytes.is_empty()).then(|| ByteBuf::from(bytes))
}

/// Asks the NSM for a document. Blocking (an ioctl): run it off the async workers.
fn attest(request: GetAttestationDocumentRequest) -> Result<Vec<u8>, Status> {
    if !std::path::Path::new(NSM_DEVICE).exists() {
        return Err(Status::failed_precondition(NO_NSM));
    }
    let fd = driver::nsm_init();
    if fd < 0 {
        return Err(Status::failed_precondition(NO_NSM));
    }
    let response = driver::nsm_process_request(
        fd,
        NsmRequest::Attestation {
            user_data: optional(request.user_data),
            nonce: optional(request.nonce),
            public_key: optional(request.public_key),
        },
    );
    driver::nsm_exit(fd);
    match response {
        NsmResponse::Attestation { document } => Ok(document),
        NsmResponse::Error(code) => Err(Status::internal(format!("the NSM refused the request: {code:?}"))),
        _ => Err(Status::internal("the NSM answered an attestation request with another response")),
    }
}

/// PCR `index` of this enclave, hex, as the NSM reports it; `None` outside an enclave (no
/// `/dev/nsm`) or if the module refuses. Blocking (an ioctl); called once at start.
pub fn describe_pcr(index: u16) -> Option<String> {
    // Checked first: the driver logs an error when the device cannot be opened, which outside
    // an enclave is the normal case here, not an error.
    if !std::path::Path::new(NSM_DEVICE).exists() {
        return None;
    }
    let fd = driver::nsm_init();
    if fd < 0 {
        return None;
    }
    let response = driver::nsm_process_request(fd, NsmRequest::DescribePCR { index });
    driver::nsm_exit(fd);
    match response {
        NsmResponse::DescribePCR { data, .. } if !data.is_empty() => {
            Some(data.iter().map(|b| format!("{b:02x}")).collect())
        }
        _ => None,
    }
}

#[tonic::async_trait]
impl Attestation for AttestationService {
    async fn get_attestation_document(
        &self,
        request: Request<GetAttestationDocumentRequest>,
    ) -> Result<Response<GetAttestationDocumentResponse>, Status> {
        let request = request.into_inner();
        for (field, len, max) in [
            ("nonce", request.nonce.len(), MAX_NONCE),
            ("user_data", request.user_data.len(), MAX_USER_DATA),
            ("public_key", request.public_key.len(), MAX_PUBLIC_KEY),
        ] {
            if len > max {
                return Err(Status::invalid_argument(format!(
                    "{field} is {len} bytes; at most {max} are allowed"
                )));
            }
        }
        let document = tokio::task::spawn_blocking(move || attest(request))
            .await
            .map_err(|e| Status::internal(format!("attestation task failed: {e}")))??;
        Ok(Response::new(GetAttestationDocumentResponse { document }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_fields_are_invalid_argument() {
        let request = GetAttestationDocumentRequest { nonce: vec![0; MAX_NONCE + 1], ..Default::default() };
        let err = AttestationService.get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("nonce"), "{}", err.message());
    }

    #[tokio::test]
    async fn without_nsm_the_call_fails_and_fabricates_nothing() {
        if std::path::Path::new(NSM_DEVICE).exists() {
            return; // inside a real enclave the document is real; covered there
        }
        let request = GetAttestationDocumentRequest { nonce: b"n".to_vec(), ..Default::default() };
        let err = AttestationService.get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(err.message(), NO_NSM);
        assert_eq!(describe_pcr(0), None, "no PCR is reported without the NSM");
    }
}
