//! The RLS against a real `redis-server` (started on a free loopback port in a temp
//! dir, stopped on drop): counts shared by two service instances, window reset, Redis
//! down -> UNAVAILABLE and back without restarting the service. Plus the gRPC wire
//! (a tonic client against the served port) and the filter's hand-made protobuf checked
//! against envoy-types' prost encoding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use lookergate_ratelimit::metrics::Metrics;
use lookergate_ratelimit::{CheckError, Counters, RateLimitServer};
use prost::Message;

const SECOND: i32 = 1;
const MINUTE: i32 = 2;

/// A `redis-server` on a free loopback port; stopped (and its dir removed) on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis {
            port,
            child: None,
            dir,
        };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    fn spawn(&mut self) {
        let bin =
            std::env::var("LOOKERGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (`make redis` installs it): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

async fn server(redis: &Redis) -> RateLimitServer {
    let counters = Counters::redis(&redis.url()).await.unwrap();
    RateLimitServer::new(
        counters,
        Duration::from_millis(500),
        Arc::new(Metrics::default()),
    )
}

fn descriptor(principal: &str, activity: &str, n: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: [
            ("rule", "fleet"),
            ("principal", principal),
            ("activity", activity),
        ]
        .into_iter()
        .map(|(k, v)| Entry {
            key: k.into(),
            value: v.into(),
        })
        .collect(),
        limit: Some(RateLimitOverride {
            requests_per_unit: n,
            unit,
        }),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "lookergate".into(),
        descriptors,
        hits_addend: 0,
    }
}

fn over(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::OverLimit as i32
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_the_count() {
    let redis = Redis::start();
    let (a, b) = (server(&redis).await, server(&redis).await);
    let q = request(vec![descriptor("p1", "db_query", 10, MINUTE)]);
    let mut allowed = 0;
    for i in 0..20 {
        let replica = if i % 2 == 0 { &a } else { &b };
        if !over(&replica.decide(&q).await.unwrap()) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "10 per minute across both replicas");
    // The 11th answer's status: over, nothing left, the window's reset within a minute.
    let answer = a.decide(&q).await.unwrap();
    let status = &answer.statuses[0];
    assert_eq!(status.code, Code::OverLimit as i32);
    assert_eq!(status.limit_remaining, 0);
    let reset = status.duration_until_reset.unwrap().seconds;
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 10);
    // Another principal, and the same principal under another limit, count apart.
    let other = request(vec![descriptor("p2", "db_query", 10, MINUTE)]);
    assert!(!over(&b.decide(&other).await.unwrap()));
    let wider = request(vec![descriptor("p1", "db_query", 11, MINUTE)]);
    assert!(!over(&b.decide(&wider).await.unwrap()));
}

#[tokio::test]
async fn the_window_resets_and_hits_addend_counts() {
    let redis = Redis::start();
    let rls = server(&redis).await;
    let mut q = request(vec![descriptor("p1", "any", 3, SECOND)]);
    q.hits_addend = 2;
    let first = rls.decide(&q).await.unwrap();
    assert!(!over(&first));
    assert_eq!(first.statuses[0].limit_remaining, 1);
    assert!(over(&rls.decide(&q).await.unwrap()), "2 + 2 > 3");
    q.hits_addend = 0; // 0 counts as 1
    assert!(!over(&rls.decide(&q).await.unwrap()), "2 + 1 = 3");
    assert!(over(&rls.decide(&q).await.unwrap()));
    // The one-second window ends: a full budget again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !over(&rls.decide(&q).await.unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "the window never reset");
    }
}

#[tokio::test]
async fn a_refused_request_does_not_use_up_the_later_budgets() {
    let rls = RateLimitServer::new(
        Counters::memory(),
        Duration::from_millis(500),
        Arc::new(Metrics::default()),
    );
    let q = request(vec![
        descriptor("p1", "db_query", 1, MINUTE),
        descriptor("p1", "any", 2, MINUTE),
    ]);
    assert!(!over(&rls.decide(&q).await.unwrap()));
    let refused = rls.decide(&q).await.unwrap();
    assert!(over(&refused));
    let codes: Vec<i32> = refused.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, vec![Code::OverLimit as i32, Code::Ok as i32]);
    // The request budget still has its second hit.
    let any = request(vec![descriptor("p1", "any", 2, MINUTE)]);
    assert!(!over(&rls.decide(&any).await.unwrap()));
    assert!(over(&rls.decide(&any).await.unwrap()));
    // Descriptors without a limit are not counted; bad ones are INVALID_ARGUMENT.
    let mut free = descriptor("p1", "any", 1, MINUTE);
    free.limit = None;
    let answer = rls.decide(&request(vec![free])).await.unwrap();
    assert!(!over(&answer));
    let bad_unit = request(vec![descriptor("p1", "any", 1, 0)]);
    assert!(matches!(
        rls.decide(&bad_unit).await,
        Err(CheckError::Invalid(_))
    ));
    let mut bad_key = descriptor("p1", "any", 1, MINUTE);
    bad_key.entries[0].key = "a\"b".into();
    assert!(matches!(
        rls.decide(&request(vec![bad_key])).await,
        Err(CheckError::Invalid(_))
    ));
}

#[tokio::test]
async fn redis_down_is_unavailable_and_its_return_heals_without_a_restart() {
    let mut redis = Redis::start();
    let rls = server(&redis).await;
    // The same, served over gRPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(lookergate_ratelimit::serve(
        listener,
        server(&redis).await,
        std::future::pending(),
    ));
    let mut client = client(addr).await;
    let q = request(vec![descriptor("p1", "db_query", 100, MINUTE)]);
    assert!(!over(&rls.decide(&q).await.unwrap()));
    assert!(!over(
        &client
            .should_rate_limit(q.clone())
            .await
            .unwrap()
            .into_inner()
    ));
    redis.stop();
    for _ in 0..3 {
        match rls.decide(&q).await {
            Err(CheckError::Unavailable(_)) => {}
            other => panic!("Redis down answered {other:?}"),
        }
    }
    let status = client.should_rate_limit(q.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    redis.spawn();
    // The connection manager reconnects on its own: answers come back, both ways.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let direct = rls.decide(&q).await;
        let served = client.should_rate_limit(q.clone()).await;
        if let (Ok(direct), Ok(served)) = (&direct, &served) {
            assert!(!over(direct));
            assert!(!over(served.get_ref()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {direct:?} {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(addr: SocketAddr) -> RateLimitServiceClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RateLimitServiceClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn the_filters_protobuf_matches_prost() {
    use lookergate::ratelimit::{RateLimit, Scope};
    use lookergate::rls;
    let limit = RateLimit {
        per_second: 5.0,
        burst: 10,
        db_queries_per_minute: Some(10),
        scope: Scope::Global,
        on_unavailable: None,
    };
    let descriptors = rls::descriptors("fleet", "00ff", &limit, true);
    let bytes = rls::encode_request("lookergate", &descriptors);
    let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.domain, "lookergate");
    assert_eq!(decoded.hits_addend, 1);
    let got: Vec<(Vec<(String, String)>, u32, i32)> = decoded
        .descriptors
        .iter()
        .map(|d| {
            let limit = d.limit.as_ref().unwrap();
            (
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                limit.requests_per_unit,
                limit.unit,
            )
        })
        .collect();
    let entries = |activity: &str| {
        vec![
            ("rule".to_owned(), "fleet".to_owned()),
            ("principal".to_owned(), "00ff".to_owned()),
            ("activity".to_owned(), activity.to_owned()),
        ]
    };
    assert_eq!(
        got,
        vec![
            (entries("db_query"), 10, MINUTE),
            (entries("any"), 10, SECOND),
            (entries("any"), 300, MINUTE),
        ]
    );
    // prost's encoding of every answer shape decodes to what the filter acts on.
    let response = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                limit_remaining: 0,
                duration_until_reset: Some(ProtoDuration {
                    seconds: 41,
                    nanos: 500_000_000,
                }),
                ..Default::default()
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: 7,
                duration_until_reset: Some(ProtoDuration {
                    seconds: 0,
                    nanos: 250_000_000,
                }),
                ..Default::default()
            },
        ],
        raw_body: b"ignored".to_vec(),
        ..Default::default()
    };
    let answer = rls::decode_response(&response.encode_to_vec()).unwrap();
    assert_eq!(
        answer,
        rls::Answer {
            over_limit: true,
            statuses: vec![
                rls::Status {
                    over_limit: true,
                    limit_remaining: 0,
                    reset_ms: 41_500
                },
                rls::Status {
                    over_limit: false,
                    limit_remaining: 7,
                    reset_ms: 250
                },
            ]
        }
    );
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        ..Default::default()
    };
    assert!(
        !rls::decode_response(&ok.encode_to_vec())
            .unwrap()
            .over_limit
    );
    // UNKNOWN (the default, encoded as nothing) is not an answer.
    assert!(rls::decode_response(&RateLimitResponse::default().encode_to_vec()).is_err());
}
