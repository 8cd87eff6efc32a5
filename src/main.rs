//! The drainwatch binary: parses flags, then serves, checks a config file, or samples once.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use drainwatch::app::{serve, Pipeline};
use drainwatch::config::{Cli, Command, Config, SampleArgs};
use drainwatch::model::socket::GAUGE_STATES;
use drainwatch::source::privileges;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one-shot tools write their progress lines to stderr for pipelines to parse: only
    // warnings and errors join them unless DRAINWATCH_LOG asks for more.
    let default_level = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRAINWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::check_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(e),
        },
        Some(Command::Sample(args)) => sample(*args),
        Some(Command::Wait(args)) => ExitCode::from(drainwatch::tools::wait(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Some(Command::Snapshot(args)) => {
            ExitCode::from(drainwatch::tools::snapshot(&args, &mut std::io::stdout()))
        }
        None => {
            let config = match Config::from_cli(&cli.run) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            // Before any thread exists: keep only what the configured sources need.
            let kept = privileges::restrict_process(privileges::Needs::of(
                config.destroy_events,
                config.tracepoints,
                !config.netns.is_empty(),
            ));
            let started = match drainwatch::app::start(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("drainwatch: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            privileges::drop_startup();
            if let Ok((effective, _)) = privileges::current() {
                tracing::info!(
                    start_up = ?kept.names(),
                    running = ?effective.names(),
                    "capabilities kept"
                );
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("drainwatch: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, started)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("drainwatch: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_error(e: drainwatch::config::ConfigError) -> ExitCode {
    eprintln!("drainwatch: invalid configuration: {e}");
    ExitCode::from(2)
}

/// `drainwatch sample`: the real pipeline (dump + decode + track + aggregate), timed per
/// iteration, for benchmarks and for a quick look without a Prometheus server.
fn sample(args: SampleArgs) -> ExitCode {
    let config = match Config::from_cli(&args.run) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let mut pipeline = Pipeline::new(config);
    let mut durations = Vec::with_capacity(args.iterations as usize);
    let mut failures = 0u32;
    for _ in 0..args.iterations {
        let started = Instant::now();
        let ok = pipeline.step();
        durations.push(started.elapsed().as_secs_f64());
        if !ok {
            failures += 1;
        }
    }
    let snapshot = pipeline.snapshot();
    let aggregates = &pipeline.model().aggregates;
    let sockets = snapshot.sockets.len() + snapshot.listeners.len();
    if args.format == "json" {
        let ports: Vec<serde_json::Value> = aggregates
            .ports
            .iter()
            .map(|(port, pa)| {
                let states: u64 = pa.classes.values().map(|c| c.states[0]).sum();
                serde_json::json!({"port": port, "listening": pa.listening, "established": states})
            })
            .collect();
        let out = serde_json::json!({
            "sockets": sockets,
            "watched_ports": snapshot.watched_ports,
            "durations_seconds": durations,
            "failures": failures,
            "ports": ports,
        });
        println!("{out}");
    } else {
        println!(
            "{} sockets, {} ports watched, {} of {} samples failed",
            sockets,
            snapshot.watched_ports.len(),
            failures,
            args.iterations
        );
        for (port, pa) in &aggregates.ports {
            for (class, ca) in &pa.classes {
                let states: Vec<String> = GAUGE_STATES
                    .iter()
                    .zip(ca.states)
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| format!("{s}={n}"))
                    .collect();
                println!(
                    "port {port} class {} listening={} {}",
                    pipeline.model().classifier.table().name(*class),
                    pa.listening,
                    states.join(" ")
                );
            }
        }
        let mut sorted = durations.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "sample duration: median {:.3} ms, min {:.3} ms",
            sorted[sorted.len() / 2] * 1000.0,
            sorted[0] * 1000.0
        );
    }
    if failures == args.iterations {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
