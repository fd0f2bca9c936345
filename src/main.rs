//! The `continuity` binary: command line, config loading, and the wiring of
//! the data plane (continuity-proxy) and the control plane
//! (continuity-control). Only this crate knows both sides.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod cli;
mod config;
mod logging;
mod reload;
mod run;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, not glibc's malloc: with the background purge thread and
/// the 1 s decay set in `.cargo/config.toml` (`JEMALLOC_SYS_WITH_MALLOC_CONF`),
/// memory freed when thousands of connections close goes back to the OS
/// within seconds, where glibc kept it (issue 16, BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let code = match cli.cmd {
        cli::Cmd::Check { config } => cli::check(&config),
        cli::Cmd::Token(cli::TokenCmd::New) => {
            println!("{}", cli::token_new());
            0
        }
        cli::Cmd::Healthcheck { url, ca } => cli::healthcheck(&url, ca.as_deref()),
        cli::Cmd::Run { config, log_format } => match config::load(&config) {
            Ok(cfg) => run_engine(cfg, log_format),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("continuity: config refused, nothing started");
                cli::EXIT_CONFIG
            }
        },
        cli::Cmd::Audit(cli::AuditCmd::Verify { dir, public_key }) => {
            continuity_control::audit::verify_cli(&dir, public_key.as_deref())
        }
        cli::Cmd::Audit(cli::AuditCmd::Keygen { out }) => {
            continuity_control::audit::keygen_cli(&out)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Logs go to stderr through a writer thread that takes them in batches
/// (logging.rs), so that a request path (the HTTP access log writes one line
/// per request) never waits on the terminal or pipe, nor wakes a thread per
/// line. Not lossy. Colours only on a terminal. The guard writes what is
/// left when it is dropped.
fn init_logging(format: cli::LogFormat) -> logging::Guard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = logging::batch_writer(std::io::stderr());
    continuity_proxy::install_sink(
        Box::new(writer.clone()),
        matches!(format, cli::LogFormat::Json),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder.init(),
    }
    guard
}

fn run_engine(cfg: config::Config, log_format: cli::LogFormat) -> i32 {
    let _log_guard = init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("continuity")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("continuity: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run::run(cfg, run::signals())) {
        Ok(()) => 0,
        Err(run::RunError::Bind(message)) => {
            tracing::error!("{message}");
            eprintln!("continuity: {message}");
            cli::EXIT_CONFIG
        }
        Err(run::RunError::Other(e)) => {
            tracing::error!("{e:#}");
            eprintln!("continuity: {e:#}");
            1
        }
    }
}
