//! SSM parameters that name an AMI (data type `aws:ec2:image`), as launch templates,
//! CloudFormation and Bottlerocket's pubsys use them: `/team/web/latest` → `ami-...`.
//! Publishing writes one, promoting moves it, listing shows which point where.

use crate::{sdk_message, Error, Result};
use serde::Serialize;

/// The data type that makes SSM check the value is an AMI id (and that launch
/// templates accept as `resolve:ssm:`).
pub const AMI_DATA_TYPE: &str = "aws:ec2:image";

/// An SSM client from the standard configuration, retried like the EC2 client.
pub async fn client(
    opts: &awsapi::AwsOptions,
    retry: &ebs::RetryPolicy,
) -> std::result::Result<aws_sdk_ssm::Client, awsapi::Error> {
    crate::retried_client!(aws_sdk_ssm, opts, retry)
}

/// A parameter set to an image.
#[derive(Debug, Clone, Serialize)]
pub struct Pointed {
    /// The parameter's name.
    pub name: String,
    /// The image it now names.
    pub image_id: String,
    /// The image it named before, if it existed.
    pub previous: Option<String>,
    /// Its version after the change.
    pub version: i64,
}

/// The parameter's value, or None when it does not exist.
pub async fn get(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<Option<String>> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::Api {
            op: "GetParameter",
            resource: name.into(),
            message: sdk_message(&e),
        }),
    }
}

/// Points the parameter at `image_id` (creating it, or overwriting it), with the
/// `aws:ec2:image` data type.
pub async fn point(ssm: &aws_sdk_ssm::Client, name: &str, image_id: &str) -> Result<Pointed> {
    if !name.starts_with('/') && name.contains('/') {
        return Err(Error::Invalid(format!(
            "SSM parameter {name:?}: a hierarchical name starts with /"
        )));
    }
    let previous = get(ssm, name).await?;
    let out = ssm
        .put_parameter()
        .name(name)
        .value(image_id)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type(AMI_DATA_TYPE)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| Error::Api {
            op: "PutParameter",
            resource: name.into(),
            message: sdk_message(&e),
        })?;
    Ok(Pointed {
        name: name.into(),
        image_id: image_id.into(),
        previous,
        version: out.version(),
    })
}

/// Every parameter under `path` (recursively) and the value it holds.
pub async fn under(ssm: &aws_sdk_ssm::Client, path: &str) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let out = ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "GetParametersByPath",
                resource: path.into(),
                message: sdk_message(&e),
            })?;
        for p in out.parameters() {
            if let (Some(n), Some(v)) = (p.name(), p.value()) {
                found.push((n.to_string(), v.to_string()));
            }
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(found);
        }
    }
}
