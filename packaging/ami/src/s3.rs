//! S3: a local file put with its SHA-256 (PutObject, or a multipart upload of checksummed
//! parts), objects deleted in batches, an unfinished multipart upload aborted.

use crate::aws::{AwsError, Clients};
use crate::plan;
use aws_sdk_s3::primitives::ByteStream;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An S3 call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// The local file could not be read.
    #[error("{}: cannot read: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    /// One part of the local file could not be read.
    #[error("{}: read of part {part} failed: {cause}", path.display())]
    ReadPart { path: PathBuf, part: u64, cause: std::io::Error },
    /// A blocking task (hashing, reading a part) ended abnormally.
    #[error("{}: {task} ended: {cause}", path.display())]
    Task { path: PathBuf, task: &'static str, cause: tokio::task::JoinError },
    /// The answer lacked the upload id.
    #[error("{region}: s3:CreateMultipartUpload on {object}: no UploadId")]
    NoUploadId { region: String, object: String },
    /// More parts than S3 takes.
    #[error("{object}: {parts} parts of {part_size} bytes exceed S3's {MAX_PARTS}")]
    TooManyParts { object: String, parts: u64, part_size: u64 },
    /// DeleteObjects answered with a per-key error.
    #[error("{region}: s3:DeleteObjects on s3://{bucket}/{key} failed: {code}: {message}")]
    NotDeleted { region: String, bucket: String, key: String, code: String, message: String },
    /// The DeleteObjects request could not be built.
    #[error("{region}: s3:DeleteObjects request for s3://{bucket}/: {message}")]
    Request { region: String, bucket: String, message: String },
}

impl Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Call(e) => Some(&e.code),
            Error::NotDeleted { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// PutObject of a local file (SHA-256 checksum sent, so S3 verifies what it stored).
pub async fn put_file(c: &Clients, bucket: &str, key: &str, file: &Path) -> Result<(), Error> {
    let what = format!("s3://{bucket}/{key}");
    let body = ByteStream::from_path(file)
        .await
        .map_err(|e| Error::Read { path: file.into(), cause: std::io::Error::other(e) })?;
    let digest = {
        let path = file.to_path_buf();
        tokio::task::spawn_blocking(move || file_sha256(&path))
            .await
            .map_err(|cause| Error::Task { path: file.into(), task: "hashing", cause })?
            .map_err(|cause| Error::Read { path: file.into(), cause })?
    };
    c.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .checksum_sha256(plan::b64(&digest))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "s3:PutObject", &what, &e))?;
    Ok(())
}

/// CreateMultipartUpload (SHA-256 checksums); returns the upload id.
pub async fn create_multipart(c: &Clients, bucket: &str, key: &str) -> Result<String, Error> {
    let what = format!("s3://{bucket}/{key}");
    let out =
        c.s3.create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(&c.region, "s3:CreateMultipartUpload", &what, &e))?;
    out.upload_id()
        .map(str::to_string)
        .ok_or_else(|| Error::NoUploadId { region: c.region.clone(), object: what })
}

/// Parts per multipart upload: S3's limit.
pub const MAX_PARTS: u64 = 10_000;

/// UploadPart of every `part_size` slice of `file` (4 at a time, each with its SHA-256), then
/// CompleteMultipartUpload. Returns the number of parts.
pub async fn put_multipart(
    c: &Clients,
    bucket: &str,
    key: &str,
    upload_id: &str,
    file: &Path,
    len: u64,
    part_size: u64,
) -> Result<u64, Error> {
    use futures::StreamExt;
    let what = format!("s3://{bucket}/{key}");
    let parts = len.div_ceil(part_size);
    if parts > MAX_PARTS {
        return Err(Error::TooManyParts { object: what, parts, part_size });
    }
    let uploads = futures::stream::iter(0..parts).map(|i| {
        let path = file.to_path_buf();
        let what = what.clone();
        async move {
            let (start, n) = (i * part_size, part_size.min(len - i * part_size));
            let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(&path)?;
                f.seek(SeekFrom::Start(start))?;
                let mut buf = vec![0u8; n as usize];
                f.read_exact(&mut buf)?;
                Ok(buf)
            })
            .await
            .map_err(|cause| Error::Task { path: file.into(), task: "part reader", cause })?
            .map_err(|cause| Error::ReadPart { path: file.into(), part: i + 1, cause })?;
            let sum = plan::b64(&plan::block_digest(&data));
            let out =
                c.s3.upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number((i + 1) as i32)
                    .checksum_sha256(&sum)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| {
                        AwsError::from_sdk(&c.region, "s3:UploadPart", &format!("{what} part {}", i + 1), &e)
                    })?;
            Ok::<_, Error>(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number((i + 1) as i32)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .checksum_sha256(sum)
                    .build(),
            )
        }
    });
    let mut done: Vec<aws_sdk_s3::types::CompletedPart> =
        uploads.buffer_unordered(4).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    done.sort_by_key(|p| p.part_number());
    c.s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(done)).build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "s3:CompleteMultipartUpload", &what, &e))?;
    Ok(parts)
}

pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// DeleteObjects in batches of 1000 (the API's limit); per-key errors are reported too.
pub async fn delete_objects(c: &Clients, bucket: &str, keys: &[String]) -> Result<(), Error> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    for chunk in keys.chunks(1000) {
        let ids: Vec<ObjectIdentifier> =
            chunk.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
        let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(|e| {
            Error::Request { region: c.region.clone(), bucket: bucket.into(), message: e.to_string() }
        })?;
        let what = format!("s3://{bucket}/{}", chunk.first().map(String::as_str).unwrap_or(""));
        let out =
            c.s3.delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(&c.region, "s3:DeleteObjects", &what, &e))?;
        if let Some(err) = out.errors().first() {
            return Err(Error::NotDeleted {
                region: c.region.clone(),
                bucket: bucket.into(),
                key: err.key().unwrap_or("?").into(),
                code: err.code().unwrap_or("NoErrorCode").into(),
                message: err.message().unwrap_or("").into(),
            });
        }
    }
    Ok(())
}

/// AbortMultipartUpload: the parts of an upload that did not complete are not kept (and billed).
pub async fn abort_multipart(c: &Clients, bucket: &str, key: &str, upload_id: &str) -> Result<(), Error> {
    c.s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await.map_err(|e| {
        AwsError::from_sdk(&c.region, "s3:AbortMultipartUpload", &format!("s3://{bucket}/{key}"), &e)
    })?;
    Ok(())
}
