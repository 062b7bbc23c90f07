//! `lookergate-broker` command line: run the broker, or rotate a role's API3 key.

use lookergate_broker::config::{BrokerConfig, ConfigFile, DEMO_CONFIG};
use lookergate_broker::{log, rotate};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  lookergate-broker [--config FILE] [--listen ADDR]
      run the broker (without --config: embedded demo config)
  lookergate-broker rotate --config FILE --role NAME
      create a new API3 key for the role, prove it, rewrite FILE (keeps FILE.bak),
      then delete the old key
  lookergate-broker check-config [--config FILE]
      validate the config and exit
  lookergate-broker print-demo-config
  lookergate-broker --version

environment overrides: LOOKERGATE_BROKER_LISTEN, LOOKERGATE_BROKER_LOOKER_URL,
LOOKERGATE_BROKER_GATEWAY_CREDENTIALS (comma-separated)";

#[derive(Default)]
struct Args {
    command: Option<String>,
    config: Option<PathBuf>,
    listen: Option<String>,
    role: Option<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--listen" => args.listen = Some(value("--listen")?),
            "--role" => args.role = Some(value("--role")?),
            "-h" | "--help" => args.command = Some("help".into()),
            "-V" | "--version" => args.command = Some("version".into()),
            cmd if !cmd.starts_with('-') && args.command.is_none() => {
                args.command = Some(cmd.to_string())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn load_config(args: &Args) -> Result<BrokerConfig, String> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            let mut file = ConfigFile::parse(DEMO_CONFIG).map_err(|e| e.to_string())?;
            file.apply_env(|k| std::env::var(k).ok());
            file.compile()
                .map_err(|e| format!("embedded demo config: {e}"))?
        }
    };
    if let Some(listen) = &args.listen {
        config.listen = listen
            .parse()
            .map_err(|_| format!("--listen: {listen:?} is not an ip:port address"))?;
    }
    Ok(config)
}

async fn run_broker(args: Args) -> Result<(), String> {
    let config = load_config(&args)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    log::info(
        "starting",
        json!({
            "listen": addr.to_string(),
            "looker_url": config.looker_url.to_string(),
            "config": args.config.as_ref().map_or("embedded demo".to_string(), |p| p.display().to_string()),
            "roles": config.roles.keys().collect::<Vec<_>>(),
            "sudo": config.sudo.is_some(),
            "gateway_credentials": config.gateway_credentials.iter().map(|c| c.fingerprint.clone()).collect::<Vec<_>>(),
        }),
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
    log::info("stopped", json!({}));
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

async fn run_rotate(args: Args) -> Result<ExitCode, String> {
    let path = args.config.ok_or("rotate needs --config FILE")?;
    let role = args.role.ok_or("rotate needs --role NAME")?;
    let report = rotate::rotate_role(&path, &role)
        .await
        .map_err(|e| e.to_string())?;
    let line = report.to_json();
    log::info(
        "rotation",
        json!({"step": "done", "trigger": "cli", "report": line}),
    );
    println!("{line}");
    // The new key is in place, but a lingering old key is worth a non-zero exit.
    Ok(if report.old_key_deleted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command.as_deref() {
        None | Some("run") => run_broker(args).await.map(|()| ExitCode::SUCCESS),
        Some("rotate") => run_rotate(args).await,
        Some("check-config") => load_config(&args).map(|c| {
            println!(
                "config ok: {} role(s), sudo {}",
                c.roles.len(),
                if c.sudo.is_some() { "on" } else { "off" }
            );
            ExitCode::SUCCESS
        }),
        Some("print-demo-config") => {
            print!("{}", DEMO_CONFIG.trim_start());
            Ok(ExitCode::SUCCESS)
        }
        Some("version") => {
            println!("lookergate-broker {}", lookergate_broker::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Some("help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            log::error("fatal", json!({"message": e}));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flag_selects_the_version_command() {
        for flag in ["--version", "-V"] {
            let args = parse_args([flag.to_string()].into_iter());
            assert_eq!(
                args.ok().and_then(|a| a.command).as_deref(),
                Some("version"),
                "{flag}"
            );
        }
    }
}
