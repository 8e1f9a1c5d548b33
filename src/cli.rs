//! What every command shares: the output format, the AWS settings, tag parsing, the
//! async runtime and JSON output.

use anyhow::{bail, Result};
use clap::ValueEnum;
use ebs::RetryPolicy;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Output format of a command.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Writes `value` as one pretty JSON document on stdout.
pub fn write_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `value` as JSON, or the text `text` makes.
pub fn emit<T: Serialize>(format: Format, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    match format {
        Format::Json => write_json(value),
        Format::Text => {
            println!("{}", text());
            Ok(())
        }
    }
}

/// Seconds before one attempt of one call is abandoned, unless --attempt-timeout says.
const DEFAULT_ATTEMPT_TIMEOUT_SECONDS: u64 = 60;
/// Attempts per call, unless --max-attempts says.
const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The standard AWS settings every command that talks to AWS takes.
#[derive(clap::Args, Debug, Clone)]
pub struct AwsArgs {
    /// AWS region (default: AWS_REGION or the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// Named profile from ~/.aws/config (default: AWS_PROFILE or "default").
    #[arg(long)]
    pub profile: Option<String>,
    /// Endpoint URL for every service (default: AWS_ENDPOINT_URL), e.g. a local test server.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Seconds before one attempt of one call is abandoned and retried.
    #[arg(long, default_value_t = DEFAULT_ATTEMPT_TIMEOUT_SECONDS, value_name = "SECONDS")]
    pub attempt_timeout: u64,
    /// Attempts per call, the first included.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
}

impl AwsArgs {
    /// The settings when no flag is given: the environment and profiles decide.
    pub fn from_environment() -> Self {
        Self {
            region: None,
            profile: None,
            endpoint_url: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT_SECONDS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            attempt_timeout: Duration::from_secs(self.attempt_timeout.max(1)),
            ..RetryPolicy::default()
        }
    }

    pub fn options(&self) -> awsapi::AwsOptions {
        awsapi::AwsOptions {
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }

    pub async fn ebs_client(&self) -> Result<Arc<awsapi::SdkEbs>> {
        let config = awsapi::load(&self.options()).await?;
        Ok(Arc::new(awsapi::SdkEbs::new(&config)))
    }

    /// These settings as command-line arguments, for the resume command.
    pub fn as_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, v) in [
            ("--region", &self.region),
            ("--profile", &self.profile),
            ("--endpoint-url", &self.endpoint_url),
        ] {
            if let Some(v) = v {
                a.push(flag.to_string());
                a.push(v.clone());
            }
        }
        a
    }
}

pub fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--tag {t:?} is not KEY=VALUE"),
        })
        .collect()
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
