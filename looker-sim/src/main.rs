//! `lookergate-looker-sim [--listen ADDR] [--token-ttl SECS] [--embed-token-ttl SECS]
//! [--embed-secret-file PATH] [--login-latency-ms MS] [--users N]`: runs the Looker simulator and prints
//! `listening on <ip:port>` once bound (tests start it on port 0).

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use lookergate_looker_sim::{serve, SimState};

/// Looker API 4.0 simulator for lookergate tests and the demo.
#[derive(Debug, Parser)]
#[command(name = "lookergate-looker-sim", version)]
struct Args {
    /// Address to bind (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10080")]
    listen: String,
    /// Lifetime of access tokens in seconds
    #[arg(long = "token-ttl", value_name = "SECS", default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Lifetime of embed navigation and API tokens in seconds (Looker: 600)
    #[arg(long = "embed-token-ttl", value_name = "SECS", default_value_t = 600)]
    embed_token_ttl_secs: u64,
    /// File holding an SSO embed secret (hmac/sha-256, id "1") for signed embed URLs
    #[arg(long = "embed-secret-file", value_name = "PATH")]
    embed_secret_file: Option<std::path::PathBuf>,
    /// Every login answers this many milliseconds later (a real Looker's take tens)
    #[arg(long = "login-latency-ms", value_name = "MS", default_value_t = 0)]
    login_latency_ms: u64,
    /// Adds N Looker users user-<n>@example.com, ids 100001.. (per-user load tests)
    #[arg(long = "users", value_name = "N", default_value_t = 0)]
    users: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let token_ttl = Duration::from_secs(args.token_ttl_secs);
    let embed_secret = match &args.embed_secret_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Ok(_) => {
                eprintln!("lookergate-looker-sim: {} is empty", path.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("lookergate-looker-sim: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "lookergate-looker-sim: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("lookergate-looker-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "listening on {local}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        eprintln!("lookergate-looker-sim: cannot write to stdout");
    }
    eprintln!(
        "lookergate-looker-sim: token ttl {}s, embed token ttl {}s",
        args.token_ttl_secs, args.embed_token_ttl_secs
    );
    let mut state = SimState::demo()
        .with_token_ttl(token_ttl)
        .with_embed_token_ttl(Duration::from_secs(args.embed_token_ttl_secs))
        .with_login_latency(Duration::from_millis(args.login_latency_ms))
        .with_extra_users(args.users);
    if let Some(secret) = embed_secret {
        state = state.with_embed_secret(&secret);
    }
    tokio::select! {
        served = serve(listener, state) => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lookergate-looker-sim: server failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("lookergate-looker-sim").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn arguments_parse_with_defaults() {
        let cases: [(&[&str], &str, u64); 4] = [
            (&[], "127.0.0.1:10080", 3600),
            (&["--listen", "127.0.0.1:0"], "127.0.0.1:0", 3600),
            (&["--listen=0.0.0.0:1", "--token-ttl", "5"], "0.0.0.0:1", 5),
            (&["--token-ttl=0"], "127.0.0.1:10080", 0),
        ];
        for (args, listen, ttl) in cases {
            let parsed = parse(args).unwrap();
            assert_eq!(
                (parsed.listen.as_str(), parsed.token_ttl_secs),
                (listen, ttl),
                "{args:?}"
            );
        }
    }

    #[test]
    fn embed_arguments_parse_with_lookers_defaults() {
        let parsed = parse(&[]).unwrap();
        assert_eq!(parsed.embed_token_ttl_secs, 600);
        assert_eq!(parsed.embed_secret_file, None);
        let parsed = parse(&["--embed-token-ttl", "20", "--embed-secret-file", "/s"]).unwrap();
        assert_eq!(parsed.embed_token_ttl_secs, 20);
        assert_eq!(
            parsed.embed_secret_file,
            Some(std::path::PathBuf::from("/s"))
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["--listen"][..],
            &["--token-ttl", "soon"],
            &["--port", "1"],
            &["--embed-token-ttl", "-1"],
        ] {
            let err = parse(args).err();
            assert_eq!(err.map(|e| e.exit_code()), Some(2), "{args:?}");
        }
    }
}
