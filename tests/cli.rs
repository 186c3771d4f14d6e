//! The command line of the real binary: `--check`, help and version, exit
//! statuses for usage errors, bad or missing configs and unbindable
//! listeners, `--log-file` appending, and SIGTERM.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// Plenty for a process that exits at once.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn check(path: &Path) -> Output {
    run_binary(&["--check".as_ref(), path.as_os_str()], EXIT_TIMEOUT)
}

#[test]
fn check_prints_one_normalised_line_per_entry_and_binds_nothing() {
    // The test holds two of the listen ports itself: a `--check` that
    // tried to bind would fail with "address in use".
    let held_a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let held_b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let pa = held_a.local_addr().unwrap().port();
    let pb = held_b.local_addr().unwrap().port();
    let (pc, pd) = (free_port(), free_port());
    let config = format!(
        "# a comment line\n\
         \n\
         {pa} example.com 22\n\
         127.0.0.1:{pb} db.internal 5432 proxy.example 3128 auth=alice:S3cretPw   # trailing comment\r\n\
         [::1]:{pc} ::1 22 http://bob:Pa%40ssw0rd@proxy.example:8080\n\
         defaults connect-timeout=5s\n\
         0.0.0.0:{pd} 192.0.2.1 25 proxy.example 3128 header=\"User-Agent: Mozilla/5.0 (X11)\"\n"
    );
    let path = write_temp("good.conf", &config);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 4, "one line per entry:\n{}", describe(&out));
    for (line, listen) in lines.iter().zip([
        format!("127.0.0.1:{pa}"),
        format!("127.0.0.1:{pb}"),
        format!("[::1]:{pc}"),
        format!("0.0.0.0:{pd}"),
    ]) {
        assert!(line.contains(&listen), "{listen} normalised in {line:?}");
    }
    assert!(lines[1].contains("***"), "password masked: {:?}", lines[1]);
    assert!(lines[2].contains("***"), "password masked: {:?}", lines[2]);
    let everything = format!("{}{}", stdout, text(&out.stderr));
    for secret in ["S3cretPw", "Pa%40ssw0rd", "Pa@ssw0rd"] {
        assert!(
            !everything.contains(secret),
            "password {secret} shown:\n{everything}"
        );
    }
    assert!(
        !text(&out.stderr).contains(&format!("{}:", path.display())),
        "a problem reported for a valid file:\n{}",
        describe(&out)
    );
    drop((held_a, held_b));
    remove_temp(&path);
}

#[test]
fn check_reports_every_bad_line_and_exits_1() {
    let (good, p2, p4, p5, p7, p8) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let config = format!(
        "{good} 127.0.0.1 22\n\
         {p2} 127.0.0.1 70000\n\
         # a comment\n\
         {p4} 127.0.0.1 22 bogus=1\n\
         {p5} 127.0.0.1 22 auth=alice:pw\n\
         127.0.0.1:{good} 127.0.0.1 23\n\
         {p7} 127.0.0.1 22 connect-timeout=0\n\
         {p8} 127.0.0.1\n\
         {} 127.0.0.1 22\n",
        free_port()
    );
    let path = write_temp("bad.conf", &config);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    let file = path.display().to_string();
    for line in [2, 4, 5, 6, 7, 8] {
        assert!(
            stderr.contains(&format!("{file}:{line}: ")),
            "line {line} not reported as {file}:{line}: message\n{}",
            describe(&out)
        );
    }
    for line in [1, 3, 9] {
        assert!(
            !stderr.contains(&format!("{file}:{line}:")),
            "good line {line} reported\n{}",
            describe(&out)
        );
    }
    remove_temp(&path);
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["-h", "--help"] {
        let out = run_binary(&[flag], EXIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", describe(&out));
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains("--check"), "{flag} shows the options: {all}");
    }
    for flag in ["-V", "--version"] {
        let out = run_binary(&[flag], EXIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", describe(&out));
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            all.contains(env!("CARGO_PKG_VERSION")),
            "{flag} shows the version: {all}"
        );
    }
}

#[test]
fn unknown_option_exits_2() {
    let path = write_temp("ok.conf", &format!("{} 127.0.0.1 22\n", free_port()));
    let out = run_binary(&["--frobnicate".as_ref(), path.as_os_str()], EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!out.stderr.is_empty(), "a usage error says something");
    remove_temp(&path);
}

#[test]
fn missing_config_operand_exits_2() {
    let out = run_binary::<&str>(&[], EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn missing_config_file_exits_1_naming_it() {
    let path = unique_dir("missing").join("does-not-exist.conf");
    for args in [
        vec![path.as_os_str()],
        vec!["--check".as_ref(), path.as_os_str()],
    ] {
        let out = run_binary(&args, EXIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            text(&out.stderr).contains(&path.display().to_string()),
            "the message names the path: {}",
            describe(&out)
        );
    }
    remove_temp(&path);
}

#[test]
fn invalid_config_at_start_exits_1_naming_file_and_line() {
    let port = free_port();
    let config = format!(
        "# first line\n{} 127.0.0.1 22\n{port} 127.0.0.1 22 idle-timeout=soon\n",
        free_port()
    );
    let path = write_temp("invalid.conf", &config);
    let out = run_binary(&[path.as_os_str()], EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains(&format!("{}:3: ", path.display())),
        "names FILE:3: {}",
        describe(&out)
    );
    assert!(!is_listening(([127, 0, 0, 1], port).into()));
    remove_temp(&path);
}

#[test]
fn unbindable_listener_at_start_exits_1_naming_the_address() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().unwrap().port();
    let other = free_port();
    let config = format!("{other} 127.0.0.1 22\n{port} 127.0.0.1 22\n");
    let path = write_temp("busy.conf", &config);
    let out = run_binary(&[path.as_os_str()], EXIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "names the address: {}",
        describe(&out)
    );
    assert!(
        stderr.to_lowercase().contains("in use"),
        "gives the reason: {}",
        describe(&out)
    );
    // The test's own listener is untouched.
    let mut c = connect_port(port);
    let (mut accepted, _) = held.accept().expect("accept on the held port");
    accepted.write_all(b"mine").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"mine");
    remove_temp(&path);
}

#[test]
fn log_file_is_appended_to() {
    let dir = unique_dir("append");
    let log = dir.join("httptunneling.log");
    fs::write(&log, "pre-existing line\n").unwrap();
    let port = free_port();
    let config = format!("{port} 127.0.0.1 22\n");
    let listening = format!("listening on 127.0.0.1:{port}");

    let mut contents = Vec::new();
    for run in 1..=2 {
        let mut ht = start_binary_in(&dir, &config, &[]);
        ht.wait_listening(&listen_addrs_of(&config), START_TIMEOUT);
        ht.wait_log_count(&listening, run, Duration::from_secs(5));
        ht.signal(libc::SIGTERM);
        let status = ht.wait_exit(EXIT_TIMEOUT).expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "run {run}\n{}", ht.diagnostics());
        contents.push(ht.log());
    }
    assert!(
        contents[0].starts_with("pre-existing line\n"),
        "{}",
        contents[0]
    );
    assert!(
        contents[1].starts_with(&contents[0]) && contents[1].len() > contents[0].len(),
        "second run appended:\n{}",
        contents[1]
    );
    assert_eq!(
        contents[1].matches(&listening).count(),
        2,
        "{}",
        contents[1]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_exits_0_and_closes_open_tunnels() {
    let echo = echo_backend();
    let port = free_port();
    let mut ht = spawn_binary(&format!("{port} 127.0.0.1 {}\n", echo.port()));

    let mut client = connect_port(port);
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    ht.signal(libc::SIGTERM);
    let status = ht.wait_exit(EXIT_TIMEOUT).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", ht.diagnostics());
    assert!(
        ht.log_contains("shutting down (SIGTERM)", Duration::ZERO),
        "{}",
        ht.diagnostics()
    );
    // The open tunnel was closed on purpose, and logged as such.
    let closed = ht.log_lines("closed up=4 down=4 ");
    assert!(
        closed.len() == 1 && closed[0].contains("reason=shutdown"),
        "close line of the open tunnel: {closed:?}\n{}",
        ht.diagnostics()
    );
    drop(client);
}

/// An auth-file others can read holds a password in the open: `--check` (and
/// the running program, at load) warns, naming the file, line and mode; at
/// mode 0600 nothing is said. Named schemes without credentials warn too.
#[test]
fn check_warns_about_an_auth_file_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let secret = write_temp("open-secret.txt", "alice:S3cretPw\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = format!(
        "{} h.example 22 127.0.0.1 3128 auth-file={}\n{} h.example 23 127.0.0.1 3128 auth-scheme=ntlm\n",
        free_port(),
        secret.display(),
        free_port()
    );
    let path = write_temp("warn.conf", &config);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warn.conf:1: auth-file {} can be read by other users (mode 0644)",
            secret.display()
        )),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("warn.conf:2: auth-scheme=ntlm without credentials"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("S3cretPw"), "{}", describe(&out));
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = check(&path);
    assert!(
        !text(&out.stderr).contains("auth-file"),
        "mode 0600 needs no warning:\n{}",
        describe(&out)
    );
    remove_temp(&path);
    remove_temp(&secret);
}

/// Every form of the routes, client-named, env and metrics grammar through
/// the real binary's `--check`, `env` read from the child's environment.
#[test]
fn check_prints_routes_client_named_entries_env_and_metrics() {
    let dir_file = write_temp(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let dir = dir_file.parent().expect("temp dir").to_path_buf();
    let ca = dir.join("ca.pem");
    let p: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let config = format!(
        "{} h.example 22 http://p1.corp:3128,https://u:S3cretPw@gw.corp:443>http://10.1.2.3:8080,direct proxy-backoff=5s proxy-ca=ca.pem proxy-verify=off\n\
         {} socks\n\
         {} http http://proxy.corp:3128 auth=alice:S3cretPw allow=.Example.org,10.0.0.0/8:22,[fd00::/8]:22-80\n\
         {} socks 22\n\
         {} db.corp 5432 env\n\
         {} h.example 22 env auth-scheme=ntlm\n\
         {} socks env\n\
         metrics {}\n",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    );
    let path = dir.join("wave2.conf");
    fs::write(&path, &config).expect("write config");
    let vars = [
        ("HTTPS_PROXY", "http://bob:Pa%40ss@envproxy.corp:3128"),
        ("no_proxy", "localhost,.corp"),
    ];
    let out = run_binary_env(
        &["--check".as_ref(), path.as_os_str()],
        Some(&vars),
        EXIT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let opts = "connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k";
    let expected = [
        format!(
            "127.0.0.1:{} h.example 22 http://p1.corp:3128,https://u:***@gw.corp:443>http://10.1.2.3:8080,direct auth-scheme=auto {opts} proxy-backoff=5s proxy-ca={} proxy-verify=off",
            p[0],
            ca.display()
        ),
        format!("127.0.0.1:{} socks {opts} allow=*", p[1]),
        format!(
            "127.0.0.1:{} http http://alice:***@proxy.corp:3128 auth-scheme=auto {opts} proxy-backoff=30s proxy-verify=on allow=.example.org,10.0.0.0/8:22,[fd00::/8]:22-80",
            p[2]
        ),
        format!("127.0.0.1:{} socks 22 {opts}", p[3]),
        format!(
            "127.0.0.1:{} db.corp 5432 env {opts} proxy-backoff=30s proxy-verify=on # env: direct (no_proxy=localhost,.corp matches db.corp:5432; HTTPS_PROXY=http://bob:***@envproxy.corp:3128)",
            p[4]
        ),
        format!(
            "127.0.0.1:{} h.example 22 env auth-scheme=ntlm {opts} proxy-backoff=30s proxy-verify=on # env: HTTPS_PROXY=http://bob:***@envproxy.corp:3128 no_proxy=localhost,.corp",
            p[5]
        ),
        format!(
            "127.0.0.1:{} socks env auth-scheme=auto {opts} proxy-backoff=30s proxy-verify=on allow=* # env: HTTPS_PROXY=http://bob:***@envproxy.corp:3128 no_proxy=localhost,.corp",
            p[6]
        ),
        format!("metrics 127.0.0.1:{}", p[7]),
    ];
    assert_eq!(lines, expected, "{}", describe(&out));
    let everything = format!("{}{}", stdout, text(&out.stderr));
    for secret in ["S3cretPw", "Pa%40ss", "Pa@ss"] {
        assert!(
            !everything.contains(secret),
            "{secret} shown:\n{everything}"
        );
    }

    // The printed lines are a valid file again, in the same environment.
    let again = dir.join("again.conf");
    fs::write(&again, &stdout).expect("write config");
    let out2 = run_binary_env(
        &["--check".as_ref(), again.as_os_str()],
        Some(&vars),
        EXIT_TIMEOUT,
    );
    assert_eq!(out2.status.code(), Some(0), "{}", describe(&out2));

    // Without the variables `env` is direct.
    let out = run_binary_env(
        &["--check".as_ref(), path.as_os_str()],
        Some(&[]),
        EXIT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("h.example 22 env connect-timeout=10s"),
        "{}",
        describe(&out)
    );
    assert!(text(&out.stdout).contains("# env: direct (no proxy variable set)"));

    // An invalid variable is an error on each env line, naming it.
    let out = run_binary_env(
        &["--check".as_ref(), path.as_os_str()],
        Some(&[("https_proxy", "socks5://p:1080")]),
        EXIT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = text(&out.stderr);
    for line in [5, 6, 7] {
        assert!(
            stderr.contains(&format!(
                "{}:{line}: https_proxy: unsupported proxy scheme \"socks5\"",
                path.display()
            )),
            "{}",
            describe(&out)
        );
    }
    remove_temp(&path);
}

#[test]
fn check_reports_the_route_list_errors() {
    let p: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let config = format!(
        "{} h 22 http://a:1,,http://b:2\n\
         {} h 22 http://a:1>\n\
         {} h 22 http://a:1, http://b:2\n\
         {} h 22 socks5://p:1080\n\
         {} h 22 direct>http://x:1\n\
         {} h 22 allow=.corp\n\
         {} socks auth=u:p\n\
         metrics {}\n",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[0]
    );
    let path = write_temp("routes.conf", &config);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let file = path.display().to_string();
    let stderr = text(&out.stderr);
    for (line, message) in [
        (1, "invalid PROXY: route 2 is empty (two ',' in a row)"),
        (2, "invalid PROXY: '>' at the end of route 1"),
        (3, "white space inside PROXY"),
        (4, "unsupported proxy scheme \"socks5\" in PROXY_URL"),
        (5, "invalid PROXY: direct inside a chain in route 1"),
        (6, "option \"allow\" needs a socks or http entry"),
        (7, "option \"auth\" needs a proxy"),
        (8, "duplicate listen address"),
    ] {
        assert!(
            stderr.contains(&format!("{file}:{line}: {message}")),
            "line {line}: {message}\n{}",
            describe(&out)
        );
    }
    remove_temp(&path);
}
