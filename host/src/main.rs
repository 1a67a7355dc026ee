//! The `agent-host` command: `serve`, `status`, `check` and `exec`.

use std::{path::PathBuf, process::ExitCode};

use agent_host::{
    config::{Config, LogFormat},
    Host,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agent-host", version, about = "Serve Flyte agents (connectors) from native plugin libraries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Flyte 1 and Flyte 2 agent protocols from the plugins in the plugin directory.
    Serve {
        /// Configuration file (TOML); without it, the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bind address.
        #[arg(long)]
        host: Option<String>,
        /// gRPC port (0: any free port).
        #[arg(long)]
        port: Option<u16>,
        /// Metrics and status port (0: any free port).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Plugin directory.
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
    },
    /// Show the plugins of a running host (from its metrics/admin port).
    Status {
        /// The admin address of the host.
        #[arg(long, default_value = "127.0.0.1:9090")]
        addr: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one task through a plugin library as Flyte would: load it like `serve` does, then
    /// ExecuteTaskSync (sync agents) or CreateTask and GetTask until a terminal phase
    /// (DeleteTask on Ctrl-C). Prints each phase and the outputs; exit 0 when it succeeded,
    /// 1 when it failed, 2 when it could not run.
    Exec {
        /// The plugin library.
        file: PathBuf,
        /// Task type (`TaskTemplate.type`).
        #[arg(long)]
        task_type: String,
        /// Task type version.
        #[arg(long, default_value_t = 0)]
        task_type_version: i32,
        /// JSON file with template fields: {"custom": {...}, "config": {...}}.
        #[arg(long)]
        template: Option<PathBuf>,
        /// JSON file of inputs by name (plain JSON, or {"$datetime": …}, {"$file": …}, {"$msgpack": …}…).
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// Configuration file (TOML): its [plugins.<name>] table, secrets and loader settings apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output prefix of the attempt.
        #[arg(long, default_value = "file:///tmp/agent-host-exec/outputs")]
        output_prefix: String,
        /// Milliseconds between GetTask calls.
        #[arg(long, default_value_t = 1000)]
        poll_interval_ms: u64,
        /// Most GetTask calls before giving up (then DeleteTask).
        #[arg(long, default_value_t = 600)]
        max_polls: u32,
        /// Abort (DeleteTask) after this many GetTask calls.
        #[arg(long)]
        abort_after: Option<u32>,
        /// Print one JSON report at the end instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin library in this process and describe it (exit 1 if it is refused).
    Check {
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
        /// The plugin library.
        file: PathBuf,
    },
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let bind = |port: u16| format!("{}:{port}", config.server.host);
    let grpc = tokio::net::TcpListener::bind(bind(config.server.port))
        .await
        .map_err(|e| format!("cannot bind gRPC port {}: {e}", bind(config.server.port)))?;
    let admin = tokio::net::TcpListener::bind(bind(config.server.metrics_port))
        .await
        .map_err(|e| format!("cannot bind metrics port {}: {e}", bind(config.server.metrics_port)))?;
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // One line on stdout, for scripts and tests that asked for port 0.
    println!("agent-host listening grpc={} metrics={}", addr(&grpc), addr(&admin));
    tracing::info!(grpc = %addr(&grpc), metrics = %addr(&admin), plugin_dir = %config.loader.plugin_dir.display(), "agent-host starting");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable (needed for plugin checks): {e}"))?;
    let host = Host::new(config, exe);
    agent_host::run(host, grpc, Some(admin), shutdown_signal()).await.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { json, file } => ExitCode::from(agent_host::check::run(&file, json) as u8),
        Command::Exec {
            file,
            task_type,
            task_type_version,
            template,
            inputs,
            config,
            output_prefix,
            poll_interval_ms,
            max_polls,
            abort_after,
            json,
        } => {
            let cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("agent-host: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            let options = agent_host::exec::ExecOptions {
                file,
                task_type,
                task_type_version,
                template,
                inputs,
                output_prefix,
                poll_interval: std::time::Duration::from_millis(poll_interval_ms),
                max_polls: max_polls.max(1),
                abort_after,
                json,
            };
            let (runtime, exe) = match (tokio::runtime::Runtime::new(), std::env::current_exe()) {
                (Ok(r), Ok(exe)) => (r, exe),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("agent-host: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let outcome = runtime.block_on(agent_host::exec::run(cfg, exe, options, &mut std::io::stdout()));
            ExitCode::from(outcome.exit_code())
        }
        Command::Status { addr, json } => match agent_host::status::fetch(&addr) {
            Ok(status) if json => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Ok(status) => {
                print!("{}", agent_host::status::render(&status));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("agent-host status: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, host, port, metrics_port, plugin_dir } => {
            agent_host::memory::tune_allocator();
            let mut cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("agent-host: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(h) = host {
                cfg.server.host = h;
            }
            if let Some(p) = port {
                cfg.server.port = p;
            }
            if let Some(p) = metrics_port {
                cfg.server.metrics_port = p;
            }
            if let Some(d) = plugin_dir {
                cfg.loader.plugin_dir = d;
            }
            init_logging(&cfg);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("agent-host: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("agent-host: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
