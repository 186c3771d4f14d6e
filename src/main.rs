//! `httptunneling [OPTIONS] CONFIG`: parse the command line, set up logging,
//! load the configuration, run the engine, map errors to exit statuses
//! (0 after SIGINT/SIGTERM or Windows' Ctrl-C, 1 for a bad config, a failed
//! bind or log file, or a `--status` that cannot be answered, 2 for a usage
//! error).

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;

use httptunneling::cli::{self, Command, RunArgs};
use httptunneling::{auth, config, logsink, status, sys, Engine, EngineOptions, StartError};

fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::usage());
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("httptunneling {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Check(path)) => check(&path),
        Ok(Command::Status(path)) => status(&path),
        Ok(Command::Run(args)) => run(args),
        Err(e) => {
            eprintln!("httptunneling: {e}\n\n{}", cli::usage());
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            for w in config::warnings(&config, &path.display().to_string()) {
                eprintln!("warning: {w}");
            }
            for entry in &config.entries {
                let mut shown = Vec::new();
                for w in entry
                    .routes
                    .iter()
                    .filter_map(|r| r.hops.first())
                    .filter_map(auth::load_warning)
                {
                    if !shown.contains(&w) {
                        eprintln!("warning: {}:{}: {w}", path.display(), entry.line);
                        shown.push(w);
                    }
                }
            }
            // Entries and the metrics line, in file order.
            let mut lines: Vec<(usize, String)> = config
                .entries
                .iter()
                .map(|e| (e.line, e.to_string()))
                .chain(config.metrics.iter().map(|m| (m.line, m.to_string())))
                .collect();
            lines.sort_by_key(|(line, _)| *line);
            let mut out = std::io::stdout().lock();
            for (_, line) in lines {
                // A closed stdout (`| head`) is not an error worth a panic.
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

/// `--status`: the summary of the running instance's metrics, or why not.
fn status(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(1);
        }
    };
    let Some(metrics) = config.metrics else {
        eprintln!(
            "httptunneling: {} has no metrics line: --status reads the running instance's \
             metrics endpoint (add e.g. `metrics 127.0.0.1:9100`)",
            path.display()
        );
        return ExitCode::from(1);
    };
    let addr = status::connect_addr(metrics.listen);
    match status::fetch(addr) {
        Ok(body) => {
            print!("{}", status::summarise(&body));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "httptunneling: cannot read http://{addr}/metrics: {e} (is httptunneling running on {}?)",
                path.display()
            );
            ExitCode::from(1)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    let mut logger = env_logger::Builder::new();
    logger.filter_level(args.level()).parse_default_env();
    let out: Box<dyn Write + Send> = match &args.log_file {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Box::new(file),
            Err(e) => {
                eprintln!(
                    "httptunneling: cannot open log file {}: {e}",
                    path.display()
                );
                return ExitCode::from(1);
            }
        },
        None => Box::new(std::io::stderr()),
    };
    logger
        .target(env_logger::Target::Pipe(Box::new(logsink::install(out))))
        .write_style(env_logger::WriteStyle::Never)
        .format(|buf, record| logsink::format(buf, record));
    logger.init();
    let code = serve(&args);
    logsink::flush();
    // A Windows console close waits for this before the process is ended.
    sys::exiting();
    code
}

/// Loads the configuration, starts the engine and runs it to the end.
fn serve(args: &RunArgs) -> ExitCode {
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                report(args, &e.to_string());
            }
            return ExitCode::from(1);
        }
    };
    for w in config::warnings(&config, &args.config.display().to_string()) {
        log::warn!("{w}");
    }
    let opts = EngineOptions {
        config_path: Some(args.config.clone()),
        watch: args.watch,
        signals: true,
        ..EngineOptions::default()
    };
    let engine = match Engine::new(config, opts) {
        Ok(e) => e,
        Err(StartError::Bind {
            listen,
            line,
            source,
        }) => {
            let msg = format!(
                "httptunneling: cannot listen on {listen} ({}:{line}): {source}",
                args.config.display()
            );
            report(args, &msg);
            return ExitCode::from(1);
        }
        Err(e) => {
            report(args, &format!("httptunneling: {e}"));
            return ExitCode::from(1);
        }
    };
    match engine.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(args, &format!("httptunneling: poll failed: {e}"));
            ExitCode::from(1)
        }
    }
}

/// A fatal problem goes to stderr, and into the log file too when there is
/// one (where stderr is the log, once is enough).
fn report(args: &RunArgs, msg: &str) {
    eprintln!("{msg}");
    if args.log_file.is_some() {
        log::error!("{msg}");
    }
}
