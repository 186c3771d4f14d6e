//! Our NTLMv2 client checked by an independent implementation: pyspnego's
//! pure-Python NTLM acceptor (`tests/ntlm_server.py`) plays the proxy. We
//! send our negotiate message, answer its challenge with our authenticate
//! message, and it says whether the NTLMv2 response proves the password it
//! has on file. A wrong password must be refused.
//!
//! Needs `python3` (or `$HTTPTUNNELING_PYTHON`) with pyspnego:
//! `python3 -m pip install pyspnego`. Without it the test fails with that
//! line, unless `HTTPTUNNELING_SKIP_REAL_PROXIES=1`, when it prints a loud
//! note and passes.

use httptunneling::auth::{challenge, ntlm};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const INSTALL: &str = "python3 -m pip install pyspnego";
const SKIP_ENV: &str = "HTTPTUNNELING_SKIP_REAL_PROXIES";

/// Users the acceptor knows, `DOMAIN:USER:PASSWORD`.
const USERS: &str = "Domain:User:Password\nCORP:jdoe:s3cr\u{e9}t \u{20ac}\n:upn@corp.example:pw\n";

struct Acceptor {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The answer to the probe sent at start, used by the first exchange.
    pending: Option<String>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Acceptor {
    /// Starts the acceptor, or `None` (after a loud note) when pyspnego is
    /// missing and skipping was asked for.
    fn start() -> Option<Acceptor> {
        let python = std::env::var("HTTPTUNNELING_PYTHON").unwrap_or_else(|_| "python3".into());
        let dir = std::env::temp_dir().join(format!("ntlm-independent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let dir = TempDir(dir);
        let users = dir.0.join("users");
        std::fs::write(&users, USERS).expect("user file");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ntlm_server.py");
        let mut child = match Command::new(&python)
            .arg(&script)
            .env("NTLM_USER_FILE", &users)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return missing(&format!("cannot run {python}: {e}")),
        };
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut a = Acceptor {
            child,
            stdin,
            stdout,
            pending: None,
            _dir: dir,
        };
        // The script answers an empty command list only at exit, so probe
        // with a real first message: a missing module shows up here.
        let first = a.send("N", &ntlm::negotiate());
        if let Some(reason) = first.strip_prefix("MISSING ") {
            return missing(&format!("{python} has no pyspnego ({reason})"));
        }
        a.pending = Some(first);
        Some(a)
    }

    fn send(&mut self, kind: &str, msg: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(msg);
        writeln!(self.stdin, "{kind} {b64}").expect("write to acceptor");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from acceptor");
        assert!(
            !line.is_empty(),
            "the acceptor exited (its stderr is above)"
        );
        line.trim_end().to_string()
    }
}

fn missing(why: &str) -> Option<Acceptor> {
    let banner = "!".repeat(72);
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!(
            "\n{banner}\nSKIPPED: the independent NTLM check did not run: {why}.\n\
             Install it with: {INSTALL}\n{banner}\n"
        );
        None
    } else {
        panic!(
            "\n{banner}\nthe independent NTLM check needs pyspnego: {why}.\n\
             Install it with: {INSTALL}\n(or set {SKIP_ENV}=1 to skip with a note)\n{banner}\n"
        );
    }
}

/// One full exchange: negotiate, the acceptor's challenge parsed from its
/// `Proxy-Authenticate: NTLM <base64>` form, our authenticate; the
/// acceptor's verdict.
fn exchange(a: &mut Acceptor, configured_user: &str, password: &str) -> String {
    let (domain, user) = ntlm::split_user(configured_user);
    exchange_as(a, domain, user, password)
}

fn exchange_as(a: &mut Acceptor, domain: &str, user: &str, password: &str) -> String {
    let reply = match a.pending.take() {
        Some(r) => r,
        None => a.send("N", &ntlm::negotiate()),
    };
    let token = reply
        .strip_prefix("C ")
        .unwrap_or_else(|| panic!("no challenge: {reply}"));
    let header = format!("NTLM {token}");
    let parsed = challenge::parse(&[&header]);
    let ch = ntlm::challenge_from_header(&parsed[0]).expect("parse the acceptor's challenge");
    assert!(
        ch.timestamp().is_some(),
        "pyspnego sends MsvAvTimestamp, so the LM response is Z(24)"
    );
    let cc = ntlm::client_challenge().expect("random");
    let msg = ntlm::authenticate(
        &ch,
        user,
        domain,
        password,
        "WORKSTATION",
        cc,
        ntlm::filetime_now(),
    )
    .expect("build authenticate");
    // What the tunnel would send, decoded back as the proxy would.
    let value = ntlm::header_value(&msg);
    use base64::Engine as _;
    let back = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("NTLM ").unwrap())
        .unwrap();
    let verdict = a.send("A", &back);
    eprintln!("{domain}\\{user}: {verdict}");
    verdict
}

#[test]
fn pyspnego_accepts_our_ntlmv2_and_refuses_a_wrong_password() {
    let Some(mut a) = Acceptor::start() else {
        return;
    };
    let ok = exchange(&mut a, r"Domain\User", "Password");
    assert!(ok.starts_with("OK "), "right password refused: {ok}");
    assert!(ok.to_lowercase().contains("user"), "{ok}");

    // Refused for the response itself, not because the message was garbled.
    const WRONG: &str = "Invalid NTLM response";
    let bad = exchange(&mut a, r"Domain\User", "password");
    assert!(
        bad.starts_with("FAIL ") && bad.contains(WRONG),
        "wrong password: {bad}"
    );

    // User names are case-insensitive in NTOWFv2; domains are not
    // upper-cased, and the acceptor looks them up case-insensitively but
    // hashes what we sent, so the domain must be as on file.
    let ok = exchange(&mut a, r"Domain\USER", "Password");
    assert!(ok.starts_with("OK "), "upper-case user refused: {ok}");

    // Non-ASCII password (UTF-16 in MD4) and the user@domain form.
    let ok = exchange(&mut a, "jdoe@CORP", "s3cr\u{e9}t \u{20ac}");
    assert!(ok.starts_with("OK "), "non-ASCII password refused: {ok}");
    let bad = exchange(&mut a, "jdoe@CORP", "s3cret \u{20ac}");
    assert!(
        bad.starts_with("FAIL ") && bad.contains(WRONG),
        "wrong non-ASCII password: {bad}"
    );

    // A UPN sent whole with an empty domain, as Windows does.
    let ok = exchange_as(&mut a, "", "upn@corp.example", "pw");
    assert!(ok.starts_with("OK "), "whole UPN refused: {ok}");

    // Unknown user.
    let bad = exchange(&mut a, r"Domain\Nobody", "Password");
    assert!(bad.starts_with("FAIL "), "unknown user accepted: {bad}");
}
