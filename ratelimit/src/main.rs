//! `lookergate-ratelimit`: the RLS v3 gRPC server (see the library).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lookergate_ratelimit::metrics::{render, Metrics};
use lookergate_ratelimit::{serve, Counters, RateLimitServer};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "lookergate-ratelimit",
    version,
    about = "lookergate's global rate limit service (Envoy RLS v3 on limitador)"
)]
struct Args {
    /// Address of the gRPC listener (RLS v3).
    #[arg(long, default_value = "127.0.0.1:10181")]
    listen: SocketAddr,
    /// Redis URL (redis://host:port) for counters shared by every replica; without it,
    /// counters are in this process's memory.
    #[arg(long)]
    redis: Option<String>,
    /// Address of the Prometheus metrics listener (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// How long one counter call to the storage may take before the answer is UNAVAILABLE.
    #[arg(long, default_value_t = 500)]
    storage_timeout_ms: u64,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if let Err(e) = run(args).await {
        error!("{e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let counters = match &args.redis {
        Some(url) => Counters::redis(url).await?,
        None => Counters::memory(),
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (metrics): {e}"))?;
        let registry = Arc::new(metrics.registry());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = Arc::clone(&registry);
                async move { render(&registry) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!("metrics listener: {e}");
            }
        });
        info!(%addr, "metrics listening");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (gRPC): {e}", args.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("gRPC listener address: {e}"))?;
    // The first stdout line, as the other lookergate services print it (tests and
    // `make fleet` wait for it; `--listen 127.0.0.1:0` picks a free port).
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {bound}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    info!(
        addr = %bound,
        storage = if args.redis.is_some() { "redis" } else { "memory" },
        "lookergate-ratelimit listening"
    );
    let server = RateLimitServer::new(
        counters,
        Duration::from_millis(args.storage_timeout_ms),
        metrics,
    );
    serve(listener, server, shutdown()).await
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    info!("shutting down");
}
