//! The command line: `httptunneling [OPTIONS] CONFIG`, parsed with getopts.
//!
//! Owns turning `argv` into a [`Command`]; never reads files or starts
//! anything.

use std::path::PathBuf;

use getopts::Options;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve the entries of `config`.
    Run(RunArgs),
    /// `--check`: validate `config` and print its normalised entries.
    Check(PathBuf),
    /// `--status`: print the state of the instance running on `config`,
    /// read from its `metrics` endpoint.
    Status(PathBuf),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// Arguments of a normal run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub config: PathBuf,
    pub log_file: Option<PathBuf>,
    /// `-v` count minus `-q` count: 0 is `info`.
    pub verbosity: i32,
    pub watch: bool,
}

impl RunArgs {
    /// The log level the flags ask for (RUST_LOG, when set, overrides it).
    pub fn level(&self) -> log::LevelFilter {
        match self.verbosity {
            i32::MIN..=-3 => log::LevelFilter::Off,
            -2 => log::LevelFilter::Error,
            -1 => log::LevelFilter::Warn,
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

fn options() -> Options {
    let mut o = Options::new();
    o.optflag(
        "t",
        "check",
        "validate CONFIG, print every problem and the normalised entries, open no socket",
    );
    o.optflag(
        "",
        "status",
        "print the state of the instance running on CONFIG (read from its metrics line's endpoint)",
    );
    o.optopt(
        "l",
        "log-file",
        "append the log to FILE instead of stderr",
        "FILE",
    );
    o.optflagmulti("v", "", "more logging (repeatable)");
    o.optflagmulti("q", "", "less logging (repeatable)");
    o.optflag(
        "",
        "no-watch",
        "do not watch CONFIG for changes (SIGHUP still reloads)",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

/// The usage text printed by `--help` and after a usage error.
pub fn usage() -> String {
    let brief = "Usage: httptunneling [OPTIONS] CONFIG\n\n\
        Forward local TCP ports to remote hosts, directly or through an HTTP proxy (CONNECT).\n\
        CONFIG has one entry a line: LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]";
    let mut text = options().usage(brief);
    text.push_str(
        "\nSignals: SIGHUP reloads CONFIG, SIGUSR1 logs a snapshot, SIGINT/SIGTERM stop\n\
         (Windows: Ctrl-C, Ctrl-Break or closing the console stop; edits of CONFIG reload).\n\
         RUST_LOG (e.g. RUST_LOG=debug) overrides -v/-q.\n",
    );
    text
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A message for a usage error (exit status 2).
pub fn parse<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let m = options().parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("h") {
        return Ok(Command::Help);
    }
    if m.opt_present("V") {
        return Ok(Command::Version);
    }
    let config = match m.free.as_slice() {
        [one] => PathBuf::from(one),
        [] => return Err("missing CONFIG".to_string()),
        [_, extra, ..] => return Err(format!("unexpected argument \"{extra}\"")),
    };
    if m.opt_present("t") {
        return Ok(Command::Check(config));
    }
    if m.opt_present("status") {
        return Ok(Command::Status(config));
    }
    Ok(Command::Run(RunArgs {
        config,
        log_file: m.opt_str("l").map(PathBuf::from),
        verbosity: m.opt_count("v") as i32 - m.opt_count("q") as i32,
        watch: !m.opt_present("no-watch"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_with_every_option() {
        let c = parse(["-l", "x.log", "-v", "-v", "-q", "--no-watch", "t.conf"]).unwrap();
        let Command::Run(r) = c else { panic!("{c:?}") };
        assert_eq!(r.config, PathBuf::from("t.conf"));
        assert_eq!(r.log_file, Some(PathBuf::from("x.log")));
        assert_eq!(r.verbosity, 1);
        assert_eq!(r.level(), log::LevelFilter::Debug);
        assert!(!r.watch);
    }

    #[test]
    fn check_help_version() {
        assert_eq!(parse(["--check", "a"]).unwrap(), Command::Check("a".into()));
        assert_eq!(parse(["-t", "a"]).unwrap(), Command::Check("a".into()));
        assert_eq!(
            parse(["--status", "a"]).unwrap(),
            Command::Status("a".into())
        );
        assert_eq!(parse(["-h"]).unwrap(), Command::Help);
        assert_eq!(parse(["--version"]).unwrap(), Command::Version);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(parse::<[&str; 0], &str>([]).unwrap_err(), "missing CONFIG");
        assert!(parse(["a", "b"]).unwrap_err().contains("\"b\""));
        assert!(parse(["--frobnicate", "a"]).is_err());
        assert!(parse(["-l"]).is_err());
    }

    #[test]
    fn quiet_levels() {
        let level = |v| {
            RunArgs {
                config: "c".into(),
                log_file: None,
                verbosity: v,
                watch: true,
            }
            .level()
        };
        assert_eq!(level(-1), log::LevelFilter::Warn);
        assert_eq!(level(-2), log::LevelFilter::Error);
        assert_eq!(level(-3), log::LevelFilter::Off);
        assert_eq!(level(0), log::LevelFilter::Info);
        assert_eq!(level(5), log::LevelFilter::Trace);
    }
}
