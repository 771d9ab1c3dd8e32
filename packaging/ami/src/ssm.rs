//! SSM parameters: the AMI id published per region (PutParameter, data type `aws:ec2:image`),
//! the base AMI of a bake read from a parameter, and a channel's `latest` read by `kv-ami gc`
//! (GetParameter), and a deleted build's parameter removed by `kv-ami gc` (DeleteParameter).

use crate::aws::{AwsError, Clients};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An SSM call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// The parameter holds something other than an AMI id.
    #[error("{region}: ssm:GetParameter {name}: value {value:?} is not an AMI id")]
    NotAnImage { region: String, name: String, value: String },
}

crate::aws::call_code!(Error);

/// PutParameter (String, DataType `aws:ec2:image`, overwrite) of `name` = `image_id`.
pub async fn put_image_id(c: &Clients, name: &str, image_id: &str) -> Result<(), Error> {
    c.ssm
        .put_parameter()
        .name(name)
        .value(image_id)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ssm:PutParameter", name, &e))?;
    Ok(())
}

/// GetParameter of `name`; None when it does not exist (a channel never promoted there).
pub async fn get_optional(c: &Clients, name: &str) -> Result<Option<String>, Error> {
    match c.ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => Ok(None),
        Err(e) => Err(AwsError::from_sdk(&c.region, "ssm:GetParameter", name, &e).into()),
    }
}

/// GetParameter of `name`, which must hold an AMI id.
pub async fn get_image_id(c: &Clients, name: &str) -> Result<String, Error> {
    let out = c
        .ssm
        .get_parameter()
        .name(name)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ssm:GetParameter", name, &e))?;
    let v = out.parameter().and_then(|p| p.value()).unwrap_or_default();
    if !v.starts_with("ami-") {
        return Err(Error::NotAnImage { region: c.region.clone(), name: name.into(), value: v.into() });
    }
    Ok(v.to_string())
}

/// DeleteParameter of `name` (`kv-ami gc`: the build parameter of a build it deregistered); one
/// already gone is not an error.
pub async fn delete(c: &Clients, name: &str) -> Result<(), Error> {
    match c.ssm.delete_parameter().name(name).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => Ok(()),
        Err(e) => Err(AwsError::from_sdk(&c.region, "ssm:DeleteParameter", name, &e).into()),
    }
}
