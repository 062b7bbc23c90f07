//! `lookergate-broker` command line: run the broker, or rotate a role's API3 key or the
//! SSO embed secret.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use lookergate_broker::config::{BrokerConfig, ConfigFile, DEMO_CONFIG};
use lookergate_broker::{log, rotate};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing::level_filters::LevelFilter;

/// `lookergate-broker`: holds Looker API3 credentials and issues short-lived Looker tokens.
#[derive(Debug, Parser)]
#[command(name = "lookergate-broker", version, after_help = ENVIRONMENT)]
struct Cli {
    /// Broker config (TOML); without it, the embedded demo config
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one); wins over the config and the environment
    #[arg(long, global = true, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// The broker's log level (error, warn, info, debug, trace, off); wins over RUST_LOG
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default)
    Run,
    /// Create a new API3 key for the role, prove it, rewrite FILE (keeps FILE.bak), then
    /// delete the old key; needs --config FILE
    Rotate {
        /// The role whose key to rotate
        #[arg(long, value_name = "NAME")]
        role: String,
    },
    /// Create a new SSO embed secret as the embed role, rewrite FILE (keeps FILE.bak) or
    /// the rotated-credentials file, then delete the old secret; needs --config FILE
    RotateEmbedSecret,
    /// Validate the config and exit
    CheckConfig,
    /// Print the embedded demo config
    PrintDemoConfig,
}

const ENVIRONMENT: &str = "\
Environment overrides: LOOKERGATE_BROKER_LISTEN, LOOKERGATE_BROKER_LOOKER_URL,
LOOKERGATE_BROKER_GATEWAY_CREDENTIALS (comma-separated).
Logs: JSON lines on stderr; without --log-level, RUST_LOG directives choose them
(e.g. RUST_LOG=lookergate_broker=debug), else info.
Exit codes: 0 ok, 1 error, 2 usage, 3 rotate left the old key (or secret) in place.";

fn load_config(args: &Cli) -> Result<BrokerConfig, String> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            let mut file = ConfigFile::parse(DEMO_CONFIG).map_err(|e| e.to_string())?;
            file.apply_env(|k| std::env::var(k).ok());
            file.compile()
                .map_err(|e| format!("embedded demo config: {e}"))?
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    Ok(config)
}

async fn run_broker(args: Cli) -> Result<(), String> {
    let config = load_config(&args)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        event = "starting",
        listen = %addr,
        looker_url = %config.looker_url,
        config = %args.config.as_ref().map_or("embedded demo".to_string(), |p| p.display().to_string()),
        roles = log::json(&config.roles.keys().collect::<Vec<_>>()),
        sudo = config.sudo.is_some(),
        // Replicas must agree on the prefix and the sealing key: compare fingerprints.
        store_prefix = config.store.as_ref().map(|s| s.prefix.as_str()),
        store_key_fp = config.store.as_ref().map(|s| s.key.fingerprint()),
        gateway_credentials = log::json(
            &config.gateway_credentials.iter().map(|c| &c.fingerprint).collect::<Vec<_>>()
        ),
    );
    let state = lookergate_broker::state(config, args.config.clone()).map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    lookergate_broker::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(event = "stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_rotate(path: &Path, role: &str) -> Result<ExitCode, String> {
    let report = rotate::rotate_role(path, role)
        .await
        .map_err(|e| e.to_string())?;
    let line = report.to_json();
    tracing::info!(
        event = "rotation",
        step = "done",
        trigger = "cli",
        report = %line
    );
    println!("{line}");
    // The new key is in place, but a lingering old key is worth a non-zero exit.
    Ok(if report.old_key_deleted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn run_rotate_embed_secret(path: &Path) -> Result<ExitCode, String> {
    let report = rotate::rotate_embed_secret(path)
        .await
        .map_err(|e| e.to_string())?;
    let line = report.to_json();
    tracing::info!(
        event = "embed_secret_rotation",
        step = "done",
        trigger = "cli",
        report = %line
    );
    println!("{line}");
    Ok(if report.warning.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match log::filter(cli.log_level) {
        Ok(filter) => log::init(filter),
        Err(e) => Cli::command().error(ErrorKind::InvalidValue, e).exit(),
    }
    let result = match &cli.command {
        None | Some(Command::Run) => run_broker(cli).await.map(|()| ExitCode::SUCCESS),
        Some(Command::Rotate { role }) => match &cli.config {
            Some(path) => run_rotate(path, role).await,
            None => Cli::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "rotate rewrites a config file: give --config FILE",
                )
                .exit(),
        },
        Some(Command::RotateEmbedSecret) => match &cli.config {
            Some(path) => run_rotate_embed_secret(path).await,
            None => Cli::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "rotate-embed-secret rewrites a config file: give --config FILE",
                )
                .exit(),
        },
        Some(Command::CheckConfig) => load_config(&cli).map(|c| {
            let on = |on: bool| if on { "on" } else { "off" };
            println!(
                "config ok: {} role(s), sudo {}, embed {}, store {}",
                c.roles.len(),
                on(c.sudo.is_some()),
                on(c.embed.is_some()),
                on(c.store.is_some())
            );
            ExitCode::SUCCESS
        }),
        Some(Command::PrintDemoConfig) => {
            print!("{}", DEMO_CONFIG.trim_start());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(event = "fatal", message = %e);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lookergate-broker").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_in_both_spellings_and_on_either_side_of_the_command() {
        let cases: [(&[&str], Option<&str>, Option<&str>); 7] = [
            (&[], None, None),
            (&["--listen", "127.0.0.1:0"], None, Some("127.0.0.1:0")),
            (
                &["--config=b.toml", "--listen=0.0.0.0:1"],
                Some("b.toml"),
                Some("0.0.0.0:1"),
            ),
            (
                &["check-config", "--config", "b.toml"],
                Some("b.toml"),
                None,
            ),
            (
                &["--config", "b.toml", "check-config"],
                Some("b.toml"),
                None,
            ),
            (
                &["rotate", "--config=b.toml", "--role", "analyst"],
                Some("b.toml"),
                None,
            ),
            (
                &["rotate-embed-secret", "--config", "b.toml"],
                Some("b.toml"),
                None,
            ),
        ];
        for (args, config, listen) in cases {
            let cli = parse(args).unwrap();
            assert_eq!(cli.config.as_deref(), config.map(Path::new), "{args:?}");
            assert_eq!(
                cli.listen.map(|a| a.to_string()).as_deref(),
                listen,
                "{args:?}"
            );
        }
    }

    #[test]
    fn usage_errors_are_refused() {
        for args in [
            &["--config"][..],
            &["--listen", "localhost"],
            &["--bogus"],
            &["rotate"],
            &["frobnicate"],
            &["--config", "a.toml", "--config", "b.toml"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn version_flag_prints_the_version() {
        for flag in ["--version", "-V"] {
            let err = parse(&[flag]).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::DisplayVersion, "{flag}");
            assert!(err.to_string().contains(lookergate_broker::VERSION));
        }
    }
}
