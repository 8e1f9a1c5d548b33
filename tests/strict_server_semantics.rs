//! The strict test server enforces the documented StartSnapshot semantics that moto
//! ignores: ClientToken idempotency, the idle Timeout, and no parent with encryption.
//! Exercised through amiforge's own SDK client, one call at a time.

use ebs::{EbsApi, ErrorKind, SnapshotState, StartRequest};
use ebs_testserver::{start, Config};

async fn client(endpoint: &str) -> awsapi::SdkEbs {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let opts = awsapi::AwsOptions {
        region: Some("us-east-1".into()),
        profile: None,
        endpoint_url: Some(endpoint.into()),
    };
    awsapi::SdkEbs::new(&awsapi::load(&opts).await.unwrap())
}

fn request(token: &str) -> StartRequest {
    StartRequest {
        volume_size_gib: 1,
        client_token: token.into(),
        timeout_minutes: 10,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_same_client_token_returns_the_same_snapshot_and_other_parameters_conflict() {
    let server = start(Config::default()).await.unwrap();
    let api = client(&server.endpoint()).await;
    let a = api.start_snapshot(request("token-1")).await.unwrap();
    let b = api.start_snapshot(request("token-1")).await.unwrap();
    assert_eq!(a.snapshot_id, b.snapshot_id);
    let other = StartRequest {
        volume_size_gib: 2,
        ..request("token-1")
    };
    let err = api.start_snapshot(other).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(a.block_size, Some(524_288));
}

#[tokio::test]
async fn an_idle_snapshot_is_cancelled_after_its_timeout() {
    // One "minute" of StartSnapshot's Timeout lasts 5 ms here.
    let server = start(Config {
        minute_ms: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let api = client(&server.endpoint()).await;
    let s = api.start_snapshot(request("token-2")).await.unwrap();
    assert_eq!(
        api.snapshot_state(&s.snapshot_id).await.unwrap(),
        SnapshotState::Pending
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        api.snapshot_state(&s.snapshot_id).await.unwrap(),
        SnapshotState::Error
    );
}

#[tokio::test]
async fn bad_start_parameters_are_validation_errors() {
    let server = start(Config::default()).await.unwrap();
    let api = client(&server.endpoint()).await;
    for bad in [
        StartRequest {
            volume_size_gib: 0,
            ..request("t3")
        },
        StartRequest {
            timeout_minutes: 5,
            ..request("t4")
        },
        StartRequest {
            encrypted: true,
            parent_snapshot_id: Some("snap-1".into()),
            ..request("t5")
        },
    ] {
        let err = api.start_snapshot(bad).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation, "{err}");
    }
    assert_eq!(
        api.snapshot_state("snap-nope").await.unwrap(),
        SnapshotState::NotFound
    );
}
