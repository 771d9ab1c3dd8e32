//! Attestation documents from the Nitro Secure Module, and `enclave.v1.Attestation`.
//!
//! Documents come only from the NSM (`/dev/nsm`, through aws-nitro-enclaves-nsm-api). Without
//! that device (any machine that is not a Nitro Enclave) asking fails with FAILED_PRECONDITION: a
//! document is never made up, cached or replayed.
//!
//! [`Attester`], the one way to ask for a document, takes no public key as bytes: a document's
//! `public_key` is set only by [`Attester::attest_recipient`], to the public half of a
//! [`RecipientKey`], which can only be generated in this process. So no caller can obtain a
//! document over a key of its choosing (KMS `Decrypt` with a `Recipient` encrypts to that key: the
//! document would be an oracle for whoever holds the key). The enclave's own HPKE keys are bound through `user_data` by the key
//! endpoint ([`crate::v2`]). `GetAttestationDocument` refuses a request with a `public_key`
//! (INVALID_ARGUMENT, counted in `kv_server.attestation.refused`) and puts
//! [`kv_protocol::keys::USER_DATA_PREFIX`] in front of the caller's `user_data`, so a caller's
//! document can never pass for a key set binding (whose prefix is
//! [`kv_protocol::keys::KEYSET_USER_DATA_PREFIX`]).

use std::sync::Arc;

use aws_nitro_enclaves_nsm_api::api::{Request as NsmRequest, Response as NsmResponse};
use aws_nitro_enclaves_nsm_api::driver;
use kv_protocol::keys::USER_DATA_PREFIX;
use serde_bytes::ByteBuf;
use tonic::{Request, Response, Status};

use crate::proto::enclave::v1::attestation_server::{Attestation, AttestationServer};
use crate::proto::enclave::v1::{GetAttestationDocumentRequest, GetAttestationDocumentResponse};
use crate::recipient::RecipientKey;
use crate::telemetry::counters::{self, AttestationRefusal};

/// Limits of the NSM for each field (larger inputs are refused by the module).
pub const MAX_NONCE: usize = 512;
pub const MAX_USER_DATA: usize = 512;
/// A caller's `user_data`: what is left after [`USER_DATA_PREFIX`].
pub const MAX_CALLER_USER_DATA: usize = MAX_USER_DATA - USER_DATA_PREFIX.len();

pub const NSM_DEVICE: &str = "/dev/nsm";
pub const NO_NSM: &str = "no NSM device (/dev/nsm): not running in a Nitro Enclave";
pub const PUBLIC_KEY_REFUSED: &str = "public_key is not accepted: attestation documents carry only keys the \
     enclave generated itself, never a caller's; the enclave's HPKE keys come with their document from \
     GET /v2/keys (kv_server.v2.KeyService/GetPublicKeys)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// Not in a Nitro Enclave.
    #[error("{NO_NSM}")]
    NoNsm,
    #[error("the NSM refused the request: {0}")]
    Refused(String),
    #[error("the NSM answered an attestation request with another response")]
    UnexpectedResponse,
}

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Status {
        match e {
            AttestError::NoNsm => Status::failed_precondition(NO_NSM),
            other => Status::internal(other.to_string()),
        }
    }
}

/// `user_data` of the document that carries the enclave's KMS recipient key.
pub const RECIPIENT_USER_DATA: &[u8] = b"nitro-kv:kms-recipient:v1";

/// Asks the NSM for attestation documents. Blocking (the NSM is an ioctl): call it off the async
/// workers.
pub trait Attester: Send + Sync + 'static {
    /// A document over `user_data` and `nonce`, never over a public key.
    fn attest(&self, user_data: Option<Vec<u8>>, nonce: Option<Vec<u8>>) -> Result<Vec<u8>, AttestError>;

    /// A document whose `public_key` is the enclave's own KMS recipient key (and `user_data`
    /// [`RECIPIENT_USER_DATA`]): the `Recipient` of KMS `GenerateDataKey`/`Decrypt`.
    fn attest_recipient(&self, key: &RecipientKey) -> Result<Vec<u8>, AttestError>;
}

fn nsm_attest(
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
) -> Result<Vec<u8>, AttestError> {
    if !std::path::Path::new(NSM_DEVICE).exists() {
        return Err(AttestError::NoNsm);
    }
    let fd = driver::nsm_init();
    if fd < 0 {
        return Err(AttestError::NoNsm);
    }
    let response = driver::nsm_process_request(
        fd,
        NsmRequest::Attestation {
            user_data: user_data.map(ByteBuf::from),
            nonce: nonce.map(ByteBuf::from),
            public_key: public_key.map(ByteBuf::from),
        },
    );
    driver::nsm_exit(fd);
    match response {
        NsmResponse::Attestation { document } => Ok(document),
        NsmResponse::Error(code) => Err(AttestError::Refused(format!("{code:?}"))),
        _ => Err(AttestError::UnexpectedResponse),
    }
}

/// The Nitro Secure Module.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nsm;

impl Attester for Nsm {
    fn attest(&self, user_data: Option<Vec<u8>>, nonce: Option<Vec<u8>>) -> Result<Vec<u8>, AttestError> {
        nsm_attest(user_data, nonce, None)
    }

    fn attest_recipient(&self, key: &RecipientKey) -> Result<Vec<u8>, AttestError> {
        nsm_attest(Some(RECIPIENT_USER_DATA.to_vec()), None, Some(key.public_key_der().to_vec()))
    }
}

/// Runs [`Attester::attest`] on the blocking pool.
pub async fn attest_blocking(
    attester: Arc<dyn Attester>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    tokio::task::spawn_blocking(move || attester.attest(user_data, nonce))
        .await
        .map_err(|e| Status::internal(format!("attestation task failed: {e}")))?
        .map_err(Status::from)
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

/// `enclave.v1.Attestation`.
#[derive(Clone)]
pub struct AttestationService {
    attester: Arc<dyn Attester>,
}

impl Default for AttestationService {
    fn default() -> Self {
        AttestationService::new(Arc::new(Nsm))
    }
}

impl AttestationService {
    pub fn new(attester: Arc<dyn Attester>) -> AttestationService {
        AttestationService { attester }
    }

    pub fn into_service(self) -> AttestationServer<AttestationService> {
        AttestationServer::new(self)
    }
}

#[tonic::async_trait]
impl Attestation for AttestationService {
    async fn get_attestation_document(
        &self,
        request: Request<GetAttestationDocumentRequest>,
    ) -> Result<Response<GetAttestationDocumentResponse>, Status> {
        let request = request.into_inner();
        // Deprecated in the proto so that generated clients warn; read here only to refuse it.
        #[allow(deprecated)]
        let caller_key = !request.public_key.is_empty();
        if caller_key {
            counters::attestation_refused(AttestationRefusal::CallerPublicKey);
            return Err(Status::invalid_argument(PUBLIC_KEY_REFUSED));
        }
        for (field, len, max) in [
            ("nonce", request.nonce.len(), MAX_NONCE),
            ("user_data", request.user_data.len(), MAX_CALLER_USER_DATA),
        ] {
            if len > max {
                counters::attestation_refused(AttestationRefusal::Oversize);
                return Err(Status::invalid_argument(format!(
                    "{field} is {len} bytes; at most {max} are allowed"
                )));
            }
        }
        let user_data = [USER_DATA_PREFIX, request.user_data.as_slice()].concat();
        let nonce = (!request.nonce.is_empty()).then_some(request.nonce);
        let document = attest_blocking(self.attester.clone(), Some(user_data), nonce).await?;
        Ok(Response::new(GetAttestationDocumentResponse { document }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_fields_are_invalid_argument() {
        let request = GetAttestationDocumentRequest { nonce: vec![0; MAX_NONCE + 1], ..Default::default() };
        let err =
            AttestationService::default().get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("nonce"), "{}", err.message());
    }

    /// What the NSM double was asked: (user_data, nonce).
    pub(crate) type Asked = (Option<Vec<u8>>, Option<Vec<u8>>);

    /// A test double of the NSM: records what it was asked, answers with a marker.
    #[derive(Default)]
    pub(crate) struct RecordingAttester {
        pub(crate) asked: std::sync::Mutex<Vec<Asked>>,
    }

    impl Attester for RecordingAttester {
        fn attest(&self, user_data: Option<Vec<u8>>, nonce: Option<Vec<u8>>) -> Result<Vec<u8>, AttestError> {
            self.asked.lock().unwrap().push((user_data, nonce));
            Ok(b"document from the test double".to_vec())
        }

        fn attest_recipient(&self, _key: &RecipientKey) -> Result<Vec<u8>, AttestError> {
            Err(AttestError::Refused("the recording double makes no recipient documents".into()))
        }
    }

    #[tokio::test]
    async fn user_data_is_prefixed_and_no_key_reaches_the_nsm() {
        let double = Arc::new(RecordingAttester::default());
        let service = AttestationService::new(double.clone());
        let request = GetAttestationDocumentRequest {
            nonce: b"nonce".to_vec(),
            user_data: b"caller bytes".to_vec(),
            ..Default::default()
        };
        let document = service.get_attestation_document(Request::new(request)).await.unwrap().into_inner();
        assert_eq!(document.document, b"document from the test double");
        let asked = double.asked.lock().unwrap().clone();
        assert_eq!(asked, [(Some(b"nitro-kv:user:v1:caller bytes".to_vec()), Some(b"nonce".to_vec()))]);

        // The largest caller user_data still fits the NSM's limit with the prefix.
        let request =
            GetAttestationDocumentRequest { user_data: vec![7; MAX_CALLER_USER_DATA], ..Default::default() };
        service.get_attestation_document(Request::new(request)).await.unwrap();
        assert_eq!(double.asked.lock().unwrap()[1].0.as_ref().unwrap().len(), MAX_USER_DATA);
        assert_eq!(double.asked.lock().unwrap()[1].1, None, "no nonce given, none asked for");
        let request = GetAttestationDocumentRequest {
            user_data: vec![7; MAX_CALLER_USER_DATA + 1],
            ..Default::default()
        };
        let err = service.get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("user_data"), "{}", err.message());
    }

    #[tokio::test]
    async fn a_caller_supplied_public_key_is_refused() {
        let double = Arc::new(RecordingAttester::default());
        let service = AttestationService::new(double.clone());
        let before = counters::attestation_refusals(AttestationRefusal::CallerPublicKey);
        #[allow(deprecated)]
        let request = GetAttestationDocumentRequest {
            nonce: b"n".to_vec(),
            public_key: b"the parent's own key".to_vec(),
            ..Default::default()
        };
        let err = service.get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("public_key is not accepted"), "{}", err.message());
        assert!(double.asked.lock().unwrap().is_empty(), "the NSM is never asked");
        assert!(counters::attestation_refusals(AttestationRefusal::CallerPublicKey) > before, "counted");
    }

    #[tokio::test]
    async fn without_nsm_the_call_fails_and_fabricates_nothing() {
        if std::path::Path::new(NSM_DEVICE).exists() {
            return; // inside a real enclave the document is real; covered there
        }
        let request = GetAttestationDocumentRequest { nonce: b"n".to_vec(), ..Default::default() };
        let err =
            AttestationService::default().get_attestation_document(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(err.message(), NO_NSM);
        assert_eq!(describe_pcr(0), None, "no PCR is reported without the NSM");
    }
}
