//! The man pages in `man/`: they lint clean with mandoc (and groff when it is
//! there), and they describe every option key the config parser knows
//! (`src/config/key.rs`) and every flag of the command line (`src/cli.rs`),
//! so that a key or flag added without documentation fails CI.
//!
//! mandoc is a Debian package (`apt-get install mandoc`; `.ci/test` installs
//! it as root). Without it the lint test fails saying so, unless
//! `HTTPTUNNELING_SKIP_REAL_PROXIES=1` (the switch for every test that needs
//! an outside tool).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const PAGE_1: &str = "man/httptunneling.1";
const PAGE_5: &str = "man/httptunneling.conf.5";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn skip_outside_tools() -> bool {
    std::env::var_os("HTTPTUNNELING_SKIP_REAL_PROXIES").is_some_and(|v| v == "1")
}

/// Runs `program args` in the crate's folder; `None` when it is not installed.
fn run(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("run {program}: {e}"),
    }
}

#[test]
fn man_pages_lint_clean_with_mandoc() {
    let Some(out) = run("mandoc", &["-T", "lint", "-W", "warning", PAGE_1, PAGE_5]) else {
        if skip_outside_tools() {
            eprintln!("mandoc not installed: lint skipped (HTTPTUNNELING_SKIP_REAL_PROXIES=1)");
            return;
        }
        panic!(
            "mandoc is not installed: the man pages cannot be linted. Install it \
             (apt-get install mandoc; bash .ci/test does so as root), or set \
             HTTPTUNNELING_SKIP_REAL_PROXIES=1 to skip the tests that need outside tools"
        );
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "mandoc -T lint -W warning {PAGE_1} {PAGE_5}: {}\n{said}",
        out.status
    );
}

#[test]
fn man_pages_format_without_groff_warnings() {
    for page in [PAGE_1, PAGE_5] {
        // groff comes with man-db on Debian; when it is missing mandoc's lint
        // above is the check.
        let Some(out) = run("groff", &["-ww", "-mdoc", "-z", page]) else {
            eprintln!("groff not installed: {page} checked by mandoc only");
            return;
        };
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "groff -ww -mdoc -z {page}: {}\n{said}",
            out.status
        );
    }
}

/// The option keys of `src/config/key.rs`: the text literals of its `keys!`
/// invocation (`Variant => "text",`). `Key` is private to the config module,
/// so its source is the list.
fn parser_keys() -> Vec<String> {
    let source = read("src/config/key.rs");
    let start = source
        .find("\nkeys! {")
        .expect("src/config/key.rs no longer invokes keys! { ... }: update tests/man_pages.rs");
    let block = &source[start..];
    let block = &block[..block.find("\n}").expect("end of keys! { ... }")];
    let keys: Vec<String> = block
        .lines()
        .filter_map(|line| {
            let (_, text) = line.split_once("=>")?;
            let text = text.trim().trim_end_matches(',').trim();
            Some(text.strip_prefix('"')?.strip_suffix('"')?.to_string())
        })
        .collect();
    // The nine keys of the first release at least; fewer means this parser
    // of the source has broken, not that keys were removed.
    for known in ["auth", "auth-file", "header", "connect-timeout", "buffer"] {
        assert!(
            keys.iter().any(|k| k == known),
            "found no {known:?} among the keys of src/config/key.rs ({keys:?}): update tests/man_pages.rs"
        );
    }
    keys
}

/// The options the page documents as items of a list: `.It Cm KEY Ns = ...`.
fn documented_options(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix(".It Cm "))
        .filter_map(|rest| {
            let (key, after) = rest.split_once(' ')?;
            after.starts_with("Ns =").then(|| key.replace("\\-", "-"))
        })
        .collect()
}

#[test]
fn every_config_key_is_documented_in_httptunneling_conf_5() {
    let page = read(PAGE_5);
    let documented = documented_options(&page);
    let missing: Vec<String> = parser_keys()
        .into_iter()
        .filter(|key| !documented.contains(key))
        .collect();
    assert!(
        missing.is_empty(),
        "option keys of src/config/key.rs without an item `.It Cm KEY Ns = ...` \
         in the OPTIONS list of {PAGE_5}: {missing:?}"
    );
    // The page follows SPEC, which may be ahead of the parser while features
    // land; say so without failing.
    let keys = parser_keys();
    let ahead: Vec<&String> = documented.iter().filter(|d| !keys.contains(d)).collect();
    if !ahead.is_empty() {
        eprintln!("note: {PAGE_5} documents options the parser does not know yet: {ahead:?}");
    }
}

/// Every flag of `httptunneling::cli::usage()` (built from the getopts
/// options of `src/cli.rs`): `-t`, `--check`, `-l`, `--log-file`, ...
fn cli_flags() -> Vec<String> {
    let usage = httptunneling::cli::usage();
    let mut flags = Vec::new();
    for line in usage.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        // "-l, --log-file FILE   append the log ..." : the leading tokens
        // that start with '-' are the flag's names.
        for token in line.split_whitespace() {
            let token = token.trim_end_matches(',');
            if !token.starts_with('-') {
                break;
            }
            flags.push(token.to_string());
        }
    }
    for known in ["-t", "--check", "--no-watch", "-V"] {
        assert!(
            flags.iter().any(|f| f == known),
            "found no {known} in cli::usage() ({flags:?}): update tests/man_pages.rs\n{usage}"
        );
    }
    flags
}

#[test]
fn every_command_line_flag_is_documented_in_httptunneling_1() {
    let page = read(PAGE_1);
    // The option list's items, e.g. `.It Fl l Ar file , Fl \-log\-file Ar file`:
    // the word after each `Fl` is a flag the item documents, without the
    // dash `Fl` writes itself (`l` for -l, `-log-file` for --log-file).
    let mut documented = BTreeSet::new();
    for line in page.lines().filter(|line| line.starts_with(".It Fl ")) {
        let line = line.replace("\\-", "-");
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == "Fl" {
                documented.insert(pair[1].to_string());
            }
        }
    }
    let missing: Vec<String> = cli_flags()
        .into_iter()
        .filter(|flag| {
            // `-t` is `Fl t`, `--check` is `Fl \-check`.
            let word = &flag[1..];
            !documented.contains(word)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "flags of src/cli.rs without an item `.It Fl ...` in the option list of {PAGE_1}: {missing:?}"
    );
}

#[test]
fn each_page_lists_the_spec_sections_it_covers() {
    // The lead checks these lists against what has landed.
    for page in [PAGE_1, PAGE_5] {
        let text = read(page);
        assert!(
            text.lines()
                .take_while(|l| l.starts_with(".\\\""))
                .any(|l| l.contains("SPEC sections this page covers")),
            "{page} lost its leading comment listing the SPEC sections it covers"
        );
    }
}

#[test]
fn the_pages_name_each_other_and_the_packaged_paths() {
    let one = read(PAGE_1);
    let five = read(PAGE_5);
    assert!(one.contains(".Xr httptunneling.conf 5"));
    assert!(five.contains(".Xr httptunneling 1"));
    for page in [&one, &five] {
        assert!(page.contains("/etc/httptunneling/tunnels.conf"));
    }
    assert!(one.contains("Pa /usr/lib/systemd/system/httptunneling.service"));
    assert!(Path::new(&root().join("debian/httptunneling.service")).exists());
}
