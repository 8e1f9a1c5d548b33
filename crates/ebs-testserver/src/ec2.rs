//! The EC2 query-protocol calls the uploader needs: DescribeSnapshots and
//! DeleteSnapshot.

use crate::{lock, Image, Shared, State, Status};
use axum::body::Bytes;
use axum::extract::State as Axum;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::time::{Duration, Instant};

const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

pub(crate) fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending | Status::Sealing(_) => "pending",
        Status::Completed => "completed",
        Status::Error => "error",
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ec2_error(code: &str, message: &str) -> Response {
    ec2_error_with_status(StatusCode::BAD_REQUEST, code, message)
}

pub(crate) fn ec2_error_with_status(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>req-1</RequestID></Response>",
        xml_escape(message)
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let s = s.replace('+', " ");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (decode(k), decode(v))))
        .collect()
}

pub(crate) async fn query(Axum(s): Axum<Shared>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let action = get("Action").unwrap_or_default();
    let faults = {
        let mut st = lock(&s);
        *st.stats.requests.entry(action.clone()).or_default() += 1;
        st.ec2_requests.push((action.clone(), form.clone()));
        st.config.faults.clone()
    };
    // A slow answer: counted above, so a client that gives up still left a trace.
    if faults.ec2_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.ec2_delay_ms)).await;
    }
    let mut st = lock(&s);
    if faults.ec2_unauthorized {
        return ec2_error_with_status(
            StatusCode::FORBIDDEN,
            "UnauthorizedOperation",
            &format!("You are not authorized to perform this operation ({action})."),
        );
    }
    let dice = st.rng.f64();
    if dice < faults.ec2_throttle_rate {
        *st.stats.requests.entry("throttled".into()).or_default() += 1;
        return ec2_error_with_status(
            StatusCode::BAD_REQUEST,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        );
    }
    // The faults lie end to end on the dice: throttled, unavailable, dropped.
    if dice < faults.ec2_throttle_rate + faults.ec2_unavailable_rate {
        *st.stats.requests.entry("unavailable".into()).or_default() += 1;
        return ec2_error_with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The service is unavailable. Please try again shortly.",
        );
    }
    if dice < faults.ec2_throttle_rate + faults.ec2_unavailable_rate + faults.ec2_drop_rate {
        *st.stats.requests.entry("dropped".into()).or_default() += 1;
        return crate::ebs::reset();
    }
    let answer = dispatch(&mut st, &action, &form);
    // A lost answer: the call took effect, then the connection dropped before the
    // client heard, as when an attempt times out after EC2 acted on it.
    if answer.status().is_success() && st.config.faults.ec2_lose_answer_of.remove(&action) {
        *st.stats.requests.entry("lost".into()).or_default() += 1;
        return crate::ebs::reset();
    }
    answer
}

/// Carries out one EC2 action.
fn dispatch(st: &mut State, action: &str, form: &[(String, String)]) -> Response {
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match action {
        "RegisterImage" => register_image(st, form),
        "DescribeImages" => describe_images(st, form),
        "CreateTags" => {
            let resources: Vec<String> = indexed(form, "ResourceId");
            let tags = tag_pairs(form, "Tag");
            for r in &resources {
                if let Some(i) = st.images.get_mut(r) {
                    i.tags.extend(tags.clone());
                } else if let Some(snap) = st.snapshots.get_mut(r) {
                    snap.tags.extend(tags.clone());
                } else {
                    return ec2_error("InvalidID", &format!("The ID '{r}' is not valid"));
                }
            }
            ok_response("CreateTags")
        }
        "ModifyImageAttribute" | "EnableImageDeprecation" | "DisableImageDeprecation" => {
            let id = get("ImageId").unwrap_or_default();
            if !st.images.contains_key(&id) {
                return ec2_error(
                    "InvalidAMIID.NotFound",
                    &format!("The image id '[{id}]' does not exist"),
                );
            }
            ok_response(action)
        }
        "ModifySnapshotAttribute" => {
            let id = get("SnapshotId").unwrap_or_default();
            if !st.snapshots.contains_key(&id) {
                return ec2_error(
                    "InvalidSnapshot.NotFound",
                    &format!("The snapshot '{id}' does not exist."),
                );
            }
            ok_response(action)
        }
        "GetImageBlockPublicAccessState" => {
            let state = if st.config.block_public_access {
                "block-new-sharing"
            } else {
                "unblocked"
            };
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetImageBlockPublicAccessStateResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><imageBlockPublicAccessState>{state}</imageBlockPublicAccessState></GetImageBlockPublicAccessStateResponse>");
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        "DeregisterImage" => {
            let id = get("ImageId").unwrap_or_default();
            match st.images.get(&id) {
                None => {
                    return ec2_error(
                        "InvalidAMIID.NotFound",
                        &format!("The image id '[{id}]' does not exist"),
                    )
                }
                Some(i) if i.protection != "disabled" => {
                    return ec2_error(
                        "OperationNotPermitted",
                        &format!(
                        "Image {id} has deregistration protection ({}) and cannot be deregistered.",
                        i.protection
                    ),
                    )
                }
                Some(_) => {}
            }
            st.images.remove(&id);
            ok_response("DeregisterImage")
        }
        "CopyImage" => copy_image(st, form),
        "EnableImageDeregistrationProtection"
        | "DisableImageDeregistrationProtection"
        | "EnableImage"
        | "DisableImage" => {
            let id = get("ImageId").unwrap_or_default();
            let cooldown = get("WithCooldown").as_deref() == Some("true");
            let Some(image) = st.images.get_mut(&id) else {
                return ec2_error(
                    "InvalidAMIID.NotFound",
                    &format!("The image id '[{id}]' does not exist"),
                );
            };
            match action {
                "EnableImageDeregistrationProtection" => {
                    image.protection = if cooldown {
                        "enabled-with-cooldown".into()
                    } else {
                        "enabled".into()
                    };
                }
                "DisableImageDeregistrationProtection" => {
                    // The cooldown keeps the image protected for 24 hours more.
                    image.protection = if image.protection == "enabled-with-cooldown" {
                        "disabled-until 2026-01-02T00:00:00Z".into()
                    } else {
                        "disabled".into()
                    };
                }
                "EnableImage" => image.disabled = false,
                _ => image.disabled = true,
            }
            ok_response(action)
        }
        "DescribeImageAttribute" => {
            let id = get("ImageId").unwrap_or_default();
            let attribute = get("Attribute").unwrap_or_default();
            let Some(image) = st.images.get(&id) else {
                return ec2_error(
                    "InvalidAMIID.NotFound",
                    &format!("The image id '[{id}]' does not exist"),
                );
            };
            let value = match attribute.as_str() {
                "lastLaunchedTime" => image
                    .last_launched
                    .as_ref()
                    .map(|t| format!("<lastLaunchedTime><value>{t}</value></lastLaunchedTime>"))
                    .unwrap_or_else(|| "<lastLaunchedTime/>".into()),
                other => {
                    return ec2_error(
                        "InvalidRequest",
                        &format!("this server answers lastLaunchedTime only, not {other}"),
                    )
                }
            };
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeImageAttributeResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><imageId>{id}</imageId>{value}</DescribeImageAttributeResponse>");
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        "GetSnapshotBlockPublicAccessState" => {
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetSnapshotBlockPublicAccessStateResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><state>{}</state></GetSnapshotBlockPublicAccessStateResponse>", st.config.snapshot_block_public_access);
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        "DescribeSnapshots" => {
            let ids: Vec<String> = form
                .iter()
                .filter(|(k, _)| k.starts_with("SnapshotId."))
                .map(|(_, v)| v.clone())
                .collect();
            let mut items = String::new();
            for id in &ids {
                st.tick(id);
                let Some(snap) = st.snapshots.get(id) else {
                    return ec2_error(
                        "InvalidSnapshot.NotFound",
                        &format!("The snapshot '{id}' does not exist."),
                    );
                };
                let status = status_name(snap.status);
                let progress = if status == "completed" { "100%" } else { "0%" };
                items.push_str(&format!(
                    "<item><snapshotId>{id}</snapshotId><volumeId>vol-ffffffff</volumeId><status>{status}</status>\
                     <startTime>2026-01-01T00:00:00.000Z</startTime><progress>{progress}</progress><ownerId>111122223333</ownerId>\
                     <volumeSize>{}</volumeSize><description>{}</description><encrypted>{}</encrypted></item>",
                    snap.volume_size_gib,
                    xml_escape(&snap.description),
                    snap.encrypted
                ));
            }
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><snapshotSet>{items}</snapshotSet></DescribeSnapshotsResponse>"
            );
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        "DeleteSnapshot" => {
            let id = get("SnapshotId").unwrap_or_default();
            if st.snapshots.remove(&id).is_none() {
                return ec2_error(
                    "InvalidSnapshot.NotFound",
                    &format!("The snapshot '{id}' does not exist."),
                );
            }
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteSnapshotResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><return>true</return></DeleteSnapshotResponse>");
            (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
        }
        other => ec2_error(
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
    }
}

fn ok_response(action: &str) -> Response {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{XMLNS}\"><requestId>req-1</requestId><return>true</return></{action}Response>");
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

/// Values of `Prefix.1`, `Prefix.2`, ... in order.
fn indexed(form: &[(String, String)], prefix: &str) -> Vec<String> {
    let mut v: Vec<(u32, String)> = form
        .iter()
        .filter_map(|(k, val)| {
            k.strip_prefix(prefix)?
                .strip_prefix('.')?
                .parse::<u32>()
                .ok()
                .map(|n| (n, val.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s)| s).collect()
}

/// `Prefix.N.Key` / `Prefix.N.Value` pairs.
fn tag_pairs(form: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    let get = |k: String| {
        form.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    (1..=50)
        .map_while(|n| {
            Some((
                get(format!("{prefix}.{n}.Key"))?,
                get(format!("{prefix}.{n}.Value")).unwrap_or_default(),
            ))
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], k: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn register_image(st: &mut State, form: &[(String, String)]) -> Response {
    if st.config.faults.fail_register {
        return ec2_error("InternalError", "injected RegisterImage failure");
    }
    let name = field(form, "Name").unwrap_or_default().to_string();
    if name.len() < 3 || name.len() > 128 {
        return ec2_error(
            "InvalidAMIName.Malformed",
            "AMI names must be between 3 and 128 characters long",
        );
    }
    if st.images.values().any(|i| i.name == name) {
        return ec2_error(
            "InvalidAMIName.Duplicate",
            &format!("AMI name {name} is already in use"),
        );
    }
    let arch = field(form, "Architecture").unwrap_or("x86_64");
    let boot = field(form, "BootMode").unwrap_or("");
    if arch == "arm64" && boot != "uefi" {
        return ec2_error(
            "InvalidParameterCombination",
            "arm64 AMIs require the uefi boot mode",
        );
    }
    if field(form, "TpmSupport").is_some() && boot != "uefi" {
        return ec2_error(
            "InvalidParameterCombination",
            "NitroTPM requires the uefi boot mode",
        );
    }
    let root = field(form, "RootDeviceName").unwrap_or_default();
    let mut root_mapped = false;
    for n in 1..=16 {
        let Some(dev) = field(form, &format!("BlockDeviceMapping.{n}.DeviceName")) else {
            break;
        };
        if let Some(snap) = field(form, &format!("BlockDeviceMapping.{n}.Ebs.SnapshotId")) {
            st.tick(snap);
            match st.snapshots.get(snap) {
                None => {
                    return ec2_error(
                        "InvalidSnapshot.NotFound",
                        &format!("The snapshot '{snap}' does not exist."),
                    )
                }
                Some(s) if s.status != Status::Completed => {
                    return ec2_error(
                        "IncorrectState",
                        &format!("Snapshot '{snap}' is not completed"),
                    )
                }
                _ => {}
            }
        }
        root_mapped |= dev == root;
    }
    if !root_mapped {
        return ec2_error(
            "InvalidBlockDeviceMapping",
            &format!("the root device {root} has no block device mapping"),
        );
    }
    let id = format!("ami-{:017x}", st.next_id);
    st.next_id += 1;
    let tags = tag_pairs(form, "TagSpecification.1.Tag");
    insert_image(st, &id, name, form.to_vec(), tags);
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RegisterImageResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><imageId>{id}</imageId></RegisterImageResponse>");
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

fn insert_image(
    st: &mut State,
    id: &str,
    name: String,
    fields: Vec<(String, String)>,
    tags: Vec<(String, String)>,
) {
    // One second apart, in registration order.
    let n = st.images.len() as u64 + st.next_id;
    let created = format!(
        "2026-01-01T{:02}:{:02}:{:02}.000Z",
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    );
    st.images.insert(
        id.to_string(),
        Image {
            id: id.to_string(),
            name,
            registered: Instant::now(),
            created,
            fields,
            tags,
            protection: "disabled".into(),
            disabled: false,
            last_launched: None,
        },
    );
}

/// CopyImage: every region is this one server, so the copy is a new image here with
/// the source's mappings and (with CopyImageTags) its tags.
fn copy_image(st: &mut State, form: &[(String, String)]) -> Response {
    let source = field(form, "SourceImageId").unwrap_or_default().to_string();
    let Some(src) = st.images.get(&source) else {
        return ec2_error(
            "InvalidAMIID.NotFound",
            &format!("The image id '[{source}]' does not exist"),
        );
    };
    let Some(name) = field(form, "Name").map(str::to_string) else {
        return ec2_error(
            "MissingParameter",
            "The request must contain the parameter Name",
        );
    };
    let fields = src.fields.clone();
    let tags = if field(form, "CopyImageTags") == Some("true") {
        src.tags.clone()
    } else {
        Vec::new()
    };
    let id = format!("ami-{:017x}", st.next_id);
    st.next_id += 1;
    insert_image(st, &id, name, fields, tags);
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyImageResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><imageId>{id}</imageId></CopyImageResponse>");
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

fn image_xml(st: &State, i: &Image) -> String {
    let f = |k: &str| field(&i.fields, k).unwrap_or_default().to_string();
    let state = if i.disabled {
        "disabled"
    } else if i.registered.elapsed() >= Duration::from_millis(st.config.completion_delay_ms) {
        "available"
    } else {
        "pending"
    };
    let mut mappings = String::new();
    for n in 1..=16 {
        let Some(dev) = field(&i.fields, &format!("BlockDeviceMapping.{n}.DeviceName")) else {
            break;
        };
        let snap = f(&format!("BlockDeviceMapping.{n}.Ebs.SnapshotId"));
        mappings.push_str(&format!(
            "<item><deviceName>{dev}</deviceName><ebs><snapshotId>{snap}</snapshotId></ebs></item>"
        ));
    }
    let tags: String = i
        .tags
        .iter()
        .map(|(k, v)| {
            format!(
                "<item><key>{}</key><value>{}</value></item>",
                xml_escape(k),
                xml_escape(v)
            )
        })
        .collect();
    format!(
        "<item><imageId>{}</imageId><name>{}</name><imageState>{state}</imageState><imageOwnerId>111122223333</imageOwnerId>\
         <architecture>{}</architecture><rootDeviceType>ebs</rootDeviceType><rootDeviceName>{}</rootDeviceName>\
         <virtualizationType>hvm</virtualizationType><bootMode>{}</bootMode><enaSupport>{}</enaSupport>\
         <creationDate>{}</creationDate><deregistrationProtection>{}</deregistrationProtection>\
         <blockDeviceMapping>{mappings}</blockDeviceMapping><tagSet>{tags}</tagSet></item>",
        i.id,
        xml_escape(&i.name),
        f("Architecture"),
        f("RootDeviceName"),
        f("BootMode"),
        f("EnaSupport"),
        i.created,
        xml_escape(&i.protection),
    )
}

fn describe_images(st: &mut State, form: &[(String, String)]) -> Response {
    let ids = indexed(form, "ImageId");
    let mut name_filter = None;
    for n in 1..=10 {
        if field(form, &format!("Filter.{n}.Name")) == Some("name") {
            name_filter = field(form, &format!("Filter.{n}.Value.1")).map(str::to_string);
        }
    }
    let mut items = String::new();
    let mut found: Vec<&Image> = st.images.values().collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    for i in found {
        if !ids.is_empty() && !ids.contains(&i.id) {
            continue;
        }
        if name_filter.as_ref().is_some_and(|n| *n != i.name) {
            continue;
        }
        items.push_str(&image_xml(st, i));
    }
    if items.is_empty() && !ids.is_empty() {
        return ec2_error(
            "InvalidAMIID.NotFound",
            &format!("The image id '{ids:?}' does not exist"),
        );
    }
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeImagesResponse xmlns=\"{XMLNS}\"><requestId>req-1</requestId><imagesSet>{items}</imagesSet></DescribeImagesResponse>");
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_are_percent_decoded() {
        let f = super::parse_form(b"Action=DescribeSnapshots&SnapshotId.1=snap-1%2Fx&A=b+c");
        assert_eq!(f[1], ("SnapshotId.1".to_string(), "snap-1/x".to_string()));
        assert_eq!(f[2].1, "b c");
    }
}
