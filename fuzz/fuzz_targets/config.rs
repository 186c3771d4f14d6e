//! The config parser (`config::parse_str_env`, what `load` and `--check`
//! use): any text, in a fixed environment and with a fixed set of readable
//! files.
//!
//! Asserts beyond "no panic":
//! - an error list is never empty, every message is one line, non-empty,
//!   without a final period, and names a line of the text (or 0);
//! - a config that parses prints (entry `Display`, the `--check` form, and
//!   the `metrics` line) to a text that parses again to as many entries,
//!   and that second text is a fixed point: printing what it parses to gives
//!   it back, with the same settings (passwords are `***` from the first
//!   print on).
#![no_main]

use std::io;
use std::path::Path;

use httptunneling::config::{parse_str_env, Config};
use libfuzzer_sys::fuzz_target;

fn reader(path: &Path) -> io::Result<String> {
    let text = match path.to_str() {
        Some("/etc/ht/secret") => "alice:s3cret\n",
        Some("/etc/ht/crlf") => "bob:pw\r\nsecond line\r\n",
        Some("/etc/ht/empty") => "",
        Some("/etc/ht/ca.pem") => {
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        }
        _ => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
    };
    Ok(text.to_string())
}

fn env(name: &str) -> Option<String> {
    match name {
        "HTTPS_PROXY" => Some("http://u:pw@proxy.example:3128".to_string()),
        "https_proxy" => Some("http://other:3129".to_string()),
        "NO_PROXY" => Some(".corp,10.0.0.0/8".to_string()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, Vec<httptunneling::config::Error>> {
    parse_str_env(text, "fuzz.conf", Path::new("/etc/ht"), &mut reader, &env)
}

fn print(config: &Config) -> String {
    let mut out = String::new();
    if let Some(m) = &config.metrics {
        out.push_str(&m.to_string());
        out.push('\n');
    }
    for e in &config.entries {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    match parse(&text) {
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(!e.message.is_empty(), "{e:?}");
                assert!(!e.message.contains('\n'), "{e:?}");
                assert!(!e.message.ends_with('.'), "{e:?}");
                assert!(e.line <= lines + 1, "{e:?} of {lines} lines");
            }
        }
        Ok(config) => {
            assert!(!config.entries.is_empty());
            let first = print(&config);
            let again = match parse(&first) {
                Ok(c) => c,
                Err(e) => panic!("printed config does not parse:\n{first}\n{e:?}"),
            };
            assert_eq!(again.entries.len(), config.entries.len(), "{first}");
            let second = print(&again);
            assert_eq!(first, second, "printing is not stable");
            let third = parse(&second).expect("second print parses");
            for (a, b) in again.entries.iter().zip(&third.entries) {
                assert!(a.same_settings(b), "{a} vs {b}");
            }
            assert_eq!(
                again.metrics.map(|m| m.listen),
                third.metrics.map(|m| m.listen)
            );
        }
    }
});
