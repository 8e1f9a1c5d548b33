//! `ebs-testserver`: the strict EBS direct test server as a standalone process, for
//! benchmarks and manual runs (`--s3`: the S3 server instead). Prints
//! `listening on http://127.0.0.1:PORT`.

use clap::Parser;

/// A strict EBS direct API test server on 127.0.0.1.
#[derive(Parser)]
struct Args {
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Milliseconds a completed snapshot stays pending.
    #[arg(long, default_value_t = 300)]
    completion_delay_ms: u64,
    /// Share of data-plane calls that fail transiently (0..1).
    #[arg(long, default_value_t = 0.0)]
    transient_rate: f64,
    /// Milliseconds a slow answer takes.
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// "Snapshot not found" for the first K puts of each snapshot.
    #[arg(long, default_value_t = 0)]
    not_found_first: u32,
    /// Answer every EBS call with AccessDeniedException.
    #[arg(long)]
    access_denied: bool,
    /// Share of EC2 calls answered RequestLimitExceeded (0..1).
    #[arg(long, default_value_t = 0.0)]
    ec2_throttle_rate: f64,
    /// Share of EC2 calls answered 503 Unavailable (0..1).
    #[arg(long, default_value_t = 0.0)]
    ec2_unavailable_rate: f64,
    /// Share of EC2 calls whose connection drops without an answer (0..1).
    #[arg(long, default_value_t = 0.0)]
    ec2_drop_rate: f64,
    /// The secret key every request must be SigV4-signed with (an empty value
    /// accepts unsigned requests).
    #[arg(long, default_value = ebs_testserver::TEST_SECRET_ACCESS_KEY)]
    secret_access_key: String,
    /// Serve S3 (path-style, objects in memory) instead of EBS and EC2.
    #[arg(long)]
    s3: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    if a.s3 {
        let server = ebs_testserver::start_s3_on(a.port).await?;
        println!("listening on {}", server.endpoint());
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let config = ebs_testserver::Config {
        completion_delay_ms: a.completion_delay_ms,
        faults: ebs_testserver::Faults {
            transient_rate: a.transient_rate,
            slow_ms: a.slow_ms,
            not_found_first: a.not_found_first,
            access_denied: a.access_denied,
            ec2_throttle_rate: a.ec2_throttle_rate,
            ec2_unavailable_rate: a.ec2_unavailable_rate,
            ec2_drop_rate: a.ec2_drop_rate,
            ..Default::default()
        },
        secret_access_key: Some(a.secret_access_key).filter(|k| !k.is_empty()),
        ..Default::default()
    };
    let server = ebs_testserver::start_on(config, a.port).await?;
    println!("listening on {}", server.endpoint());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
