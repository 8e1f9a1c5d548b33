//! A bundle as the input of upload and publish: opened and verified whole before
//! anything is sent, with its bundled audit (for the gate) and registration spec.

use crate::audit::FailOn;
use crate::progress::Reporter;
use anyhow::{Context, Result};
use std::path::Path;

/// File names of the bundled documents.
pub const AUDIT_FILE: &str = "audit.json";
/// The SBOM (CycloneDX 1.6).
pub const SBOM_FILE: &str = "sbom.cdx.json";
/// The RegisterImage spec.
pub const REGISTER_FILE: &str = "register.json";
/// The vulnerability database the bundle was audited with, when it was (its date is
/// in the audit's `vulnerability_database`).
pub const VULNDB_FILE: &str = "vulndb.sqlite";

/// Opens a bundle and checks every byte of it (and the signature, given a key).
pub fn open_and_verify(
    path: &Path,
    public_key: Option<&Path>,
    show_progress: bool,
) -> Result<(bundle::Bundle, bundle::Verified)> {
    let b = open(path)?;
    let key = public_key.map(bundle::load_verifying_key).transpose()?;
    let progress = Reporter::new(show_progress, "blocks verified");
    let v = b.verify(key.as_ref(), &*progress);
    progress.finish();
    Ok((b, v?))
}

/// Opens and fully verifies a bundle; the upload and publish paths call this before
/// sending anything.
pub fn open_verified(
    path: &Path,
    public_key: Option<&Path>,
    show_progress: bool,
) -> Result<bundle::Bundle> {
    let (b, v) = open_and_verify(path, public_key, show_progress).with_context(|| {
        format!(
            "bundle {} does not verify; nothing was uploaded",
            path.display()
        )
    })?;
    eprintln!(
        "amiforge: bundle verified: {} blocks, manifest sha256 {}, signature {}",
        v.blocks, v.manifest_sha256, v.signature
    );
    Ok(b)
}

/// Opens the bundle at `path`: a directory, or an `s3://bucket/prefix`.
pub fn open(path: &Path) -> Result<bundle::Bundle> {
    Ok(match crate::objects::s3_url(path) {
        Some(url) => bundle::Bundle::open_in(Box::new(crate::objects::S3Store::new(url)?))?,
        None => bundle::Bundle::open(path)?,
    })
}

/// Whether `path` is a bundle: a directory, or an S3 prefix, holding a manifest.
pub fn is_bundle(path: &Path) -> bool {
    match crate::objects::s3_url(path) {
        Some(url) => crate::objects::is_bundle_in_s3(url),
        None => path.is_dir() && path.join(bundle::MANIFEST).is_file(),
    }
}

/// The bundled audit's findings at or above `fail_on`: (severity, rule, path).
pub fn gate(b: &bundle::Bundle, fail_on: FailOn) -> Result<(Vec<String>, String)> {
    let report: serde_json::Value = serde_json::from_slice(&b.file(AUDIT_FILE)?)?;
    let os = report["os"]["pretty_name"]
        .as_str()
        .unwrap_or("unknown OS")
        .to_string();
    let Some(threshold) = fail_on.threshold() else {
        return Ok((Vec::new(), os));
    };
    let mut failing = Vec::new();
    for f in report["findings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let sev = f["severity"].as_str().and_then(audit::Severity::parse);
        if sev.is_some_and(|s| s >= threshold) {
            failing.push(format!(
                "{} {} {}",
                f["severity"].as_str().unwrap_or(""),
                f["rule"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or("")
            ));
        }
    }
    Ok((failing, os))
}

/// The bundled registration spec.
pub fn spec(b: &bundle::Bundle) -> Result<ami::RegisterSpec> {
    Ok(serde_json::from_slice(&b.file(REGISTER_FILE)?)?)
}
