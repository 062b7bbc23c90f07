//! `lookergate-looker-sim [--listen ADDR] [--token-ttl SECS]`: runs the Looker simulator
//! and prints `listening on <ip:port>` once bound (tests start it on port 0).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use lookergate_looker_sim::{serve, SimState};

const USAGE: &str = "usage: lookergate-looker-sim [--listen ADDR] [--token-ttl SECS]
  --listen ADDR      address to bind (default 127.0.0.1:10080; port 0 picks a free port)
  --token-ttl SECS   lifetime of access tokens in seconds (default 3600)";

struct Args {
    listen: String,
    token_ttl: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:10080".into(),
        token_ttl: Duration::from_secs(3600),
    };
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => parsed.listen = value()?,
            "--token-ttl" => {
                let raw = value()?;
                let secs = raw
                    .parse::<u64>()
                    .map_err(|_| format!("--token-ttl {raw:?} is not a number of seconds"))?;
                parsed.token_ttl = Duration::from_secs(secs);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("lookergate-looker-sim: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
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
        "lookergate-looker-sim: token ttl {}s",
        args.token_ttl.as_secs()
    );
    let state = SimState::demo().with_token_ttl(args.token_ttl);
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

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
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
                (parsed.listen.as_str(), parsed.token_ttl.as_secs()),
                (listen, ttl),
                "{args:?}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["--listen"][..],
            &["--token-ttl", "soon"],
            &["--port", "1"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
