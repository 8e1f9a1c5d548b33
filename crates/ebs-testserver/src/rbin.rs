//! Recycle Bin (REST-JSON): ListRules and GetRule over the rules in the server's
//! configuration, so tests can say which retention rules the region has.

use crate::{lock, RecycleBinRule, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State as Axum};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

const ACCOUNT: &str = "111122223333";

fn arn(rule: &RecycleBinRule) -> String {
    format!("arn:aws:rbin:us-east-1:{ACCOUNT}:rule/{}", rule.id)
}

fn period(rule: &RecycleBinRule) -> Value {
    json!({ "RetentionPeriodValue": rule.retention_days, "RetentionPeriodUnit": "DAYS" })
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// POST /list-rules {"ResourceType": "EC2_IMAGE" | "EBS_SNAPSHOT"}.
pub(crate) async fn list_rules(Axum(s): Axum<Shared>, body: Bytes) -> Response {
    let mut st = lock(&s);
    *st.stats.requests.entry("ListRules".into()).or_default() += 1;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(kind) = request["ResourceType"].as_str() else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "Message": "ResourceType is required", "Reason": "INVALID_VALUE" }),
        );
    };
    let rules: Vec<Value> = st
        .config
        .recycle_bin_rules
        .iter()
        .filter(|r| r.resource_type == kind)
        .map(|r| {
            json!({
                "Identifier": r.id,
                "Description": "",
                "RetentionPeriod": period(r),
                "LockState": "unlocked",
                "RuleArn": arn(r),
            })
        })
        .collect();
    answer(StatusCode::OK, json!({ "Rules": rules }))
}

/// GET /rules/{id}.
pub(crate) async fn get_rule(Axum(s): Axum<Shared>, Path(id): Path<String>) -> Response {
    let mut st = lock(&s);
    *st.stats.requests.entry("GetRule".into()).or_default() += 1;
    let Some(r) = st.config.recycle_bin_rules.iter().find(|r| r.id == id) else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({ "Message": format!("rule {id} not found"), "Reason": "RULE_NOT_FOUND" }),
        );
    };
    let tags: Vec<Value> = r
        .resource_tags
        .iter()
        .map(|(k, v)| json!({ "ResourceTagKey": k, "ResourceTagValue": v }))
        .collect();
    answer(
        StatusCode::OK,
        json!({
            "Identifier": r.id,
            "Description": "",
            "ResourceType": r.resource_type,
            "RetentionPeriod": period(r),
            "ResourceTags": tags,
            "Status": "available",
            "LockState": "unlocked",
            "RuleArn": arn(r),
        }),
    )
}
