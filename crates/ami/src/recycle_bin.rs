//! Recycle Bin retention rules: whether a deregistered AMI or a deleted snapshot can
//! still be recovered, so that `prune --require-recycle-bin` removes only what a rule
//! keeps.
//!
//! A rule counts when it is `available` and applies to every resource of its type in
//! the region (no resource tags, no exclusion tags). Tag-scoped rules depend on each
//! resource's tags and are not relied on.

use crate::{sdk_message, Error, Result};
use aws_sdk_rbin::types::ResourceType;
use serde::Serialize;

/// A Recycle Bin client from the standard configuration, retried like the EC2 client.
pub async fn client(
    opts: &awsapi::AwsOptions,
    retry: &ebs::RetryPolicy,
) -> std::result::Result<aws_sdk_rbin::Client, awsapi::Error> {
    crate::retried_client!(aws_sdk_rbin, opts, retry)
}

/// A rule that keeps every deleted resource of one type for a while.
#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    /// The rule's identifier.
    pub rule_id: String,
    /// How long it keeps what is deleted, e.g. "7 DAYS".
    pub keeps_for: String,
}

/// The region-wide rule retaining `kind` (EC2_IMAGE or EBS_SNAPSHOT), if any.
pub async fn retention(
    rbin: &aws_sdk_rbin::Client,
    kind: ResourceType,
) -> Result<Option<Retention>> {
    let what = kind.as_str().to_string();
    let mut token = None;
    loop {
        let out = rbin
            .list_rules()
            .resource_type(kind.clone())
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| Error::Api {
                op: "ListRules",
                resource: what.clone(),
                message: sdk_message(&e),
            })?;
        for summary in out.rules() {
            let Some(id) = summary.identifier() else {
                continue;
            };
            let rule = rbin
                .get_rule()
                .identifier(id)
                .send()
                .await
                .map_err(|e| Error::Api {
                    op: "GetRule",
                    resource: id.into(),
                    message: sdk_message(&e),
                })?;
            let applies_to_all = rule.resource_tags().is_empty()
                && rule.exclude_resource_tags().is_empty()
                && rule.status().is_some_and(|s| s.as_str() == "available");
            if let (true, Some(period)) = (applies_to_all, rule.retention_period()) {
                return Ok(Some(Retention {
                    rule_id: id.into(),
                    keeps_for: format!(
                        "{} {}",
                        period.retention_period_value(),
                        period.retention_period_unit().as_str()
                    ),
                }));
            }
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(None);
        }
    }
}
