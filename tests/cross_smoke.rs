//! The smoke test of a cross-built binary (`.ci/cross`): the Windows `.exe`
//! under wine, the ARM Linux binaries under qemu-user. This test runs on the
//! build machine and drives the binary through a runner named in the
//! environment; it is `#[ignore]`d, so `cargo test` leaves it alone, and
//! fails at once when asked to run without that environment.
//!
//! - `HTTPTUNNELING_SMOKE_RUN`: the command, split at spaces, that runs the
//!   binary (e.g. `/usr/lib/wine/wine64 /tmp/x/httptunneling.exe` or
//!   `qemu-aarch64-static -L /usr/aarch64-linux-gnu target/…/httptunneling`);
//!   the options and CONFIG are appended.
//! - `HTTPTUNNELING_SMOKE_WINDOWS=1`: write the config with CRLF line ends
//!   and give it and the log file as Windows paths (`Z:\tmp\…`, wine's
//!   drive for `/`), as a Windows user would.
//! - `HTTPTUNNELING_SMOKE_START_SECS`: how long the first start may take
//!   (wine creates its prefix then; default 180).
//!
//! What it checks, in one run of the binary: a direct entry and an entry
//! through a real squid each carry 8 MiB each way at once, byte-exact
//! (sha256; the direct one ends with a half-close relayed end to end); an
//! edit of the config (one entry removed, one added) is picked up by the
//! file watch alone (no SIGHUP: Windows has none); SIGINT (which wine turns
//! into the console's Ctrl-C event) stops it with exit status 0 and the
//! log says why. It prints the binary's idle RSS as Linux sees the process
//! (under wine and qemu that includes the emulator).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proxies::RealProxy;
use common::{
    assert_echo, connect_port, echo_backend, free_port, hex, payload, payload_sha, sha, wait_until,
};

const MIB: usize = 1024 * 1024;

/// The runner's settings, from the environment.
struct Runner {
    command: Vec<String>,
    windows: bool,
    start: Duration,
}

impl Runner {
    fn from_env() -> Runner {
        let command: Vec<String> = std::env::var("HTTPTUNNELING_SMOKE_RUN")
            .unwrap_or_else(|_| {
                panic!("HTTPTUNNELING_SMOKE_RUN is not set: this test runs a cross-built binary, see .ci/cross")
            })
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert!(!command.is_empty(), "HTTPTUNNELING_SMOKE_RUN is empty");
        let secs = std::env::var("HTTPTUNNELING_SMOKE_START_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        Runner {
            command,
            windows: std::env::var("HTTPTUNNELING_SMOKE_WINDOWS").as_deref() == Ok("1"),
            start: Duration::from_secs(secs),
        }
    }

    /// `path` as the binary is told it: `Z:\tmp\…` for Windows.
    fn path(&self, path: &Path) -> String {
        let text = path.display().to_string();
        if self.windows {
            format!("Z:{}", text.replace('/', "\\"))
        } else {
            text
        }
    }

    /// Writes the config, with CRLF line ends for Windows.
    fn write_config(&self, path: &Path, lines: &[String]) {
        let end = if self.windows { "\r\n" } else { "\n" };
        let mut text = String::from("# cross smoke test");
        text.push_str(end);
        for line in lines {
            text.push_str(line);
            text.push_str(end);
        }
        // Written beside and renamed over, as editors save.
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, path).expect("rename config");
    }
}

/// Kills the binary (by PID) if the test fails before it stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `len` bytes sent and the same `len` read back at once, compared by
/// sha256, without a half-close: squid 5 ends the whole tunnel on the first
/// FIN (SPEC "Known limits"), which would cut the echo short.
fn echo_exact(port: u16, seed: u64, len: usize) {
    let mut stream = connect_port(port);
    let mut writer = stream.try_clone().expect("try_clone");
    let data = payload(seed, len);
    let sender = std::thread::spawn(move || writer.write_all(&data));
    let mut back = vec![0; len];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("echo through port {port}: {e}"));
    sender
        .join()
        .expect("sender thread")
        .unwrap_or_else(|e| panic!("send through port {port}: {e}"));
    let (got, want) = (sha(&back), payload_sha(seed, len as u64));
    assert_eq!(hex(&got), hex(&want), "echo through port {port}: sha256");
}

fn log_text(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_ok()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Fails with the log and the binary's own output, which say why.
fn fail(what: &str, log: &Path, output: &Path) -> ! {
    panic!(
        "{what}\n--- log ---\n{}\n--- stdout/stderr ---\n{}",
        log_text(log),
        fs::read_to_string(output).unwrap_or_default()
    )
}

#[test]
#[ignore = "run by .ci/cross on a cross-built binary (HTTPTUNNELING_SMOKE_RUN)"]
fn cross_built_binary_forwards_reloads_and_stops() {
    let runner = Runner::from_env();
    let squid = RealProxy::squid()
        .unwrap_or_else(|| panic!("squid is needed: {}", common::proxies::INSTALL));
    let backend = echo_backend();
    let dir: PathBuf = std::env::temp_dir().join(format!("ht-cross-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    let conf = dir.join("tunnels.conf");
    let log = dir.join("httptunneling.log");
    let output = dir.join("output.txt");

    let (direct, proxied, added) = (free_port(), free_port(), free_port());
    let echo = backend.port();
    let squid_port = squid.addr.port();
    let direct_line = format!("127.0.0.1:{direct} 127.0.0.1 {echo}");
    let proxied_line = format!("127.0.0.1:{proxied} 127.0.0.1 {echo} 127.0.0.1 {squid_port}");
    let added_line = format!("127.0.0.1:{added} 127.0.0.1 {echo} 127.0.0.1 {squid_port}");
    runner.write_config(&conf, &[direct_line, proxied_line.clone()]);

    let out = fs::File::create(&output).expect("create the output file");
    let child = Command::new(&runner.command[0])
        .args(&runner.command[1..])
        .arg("--log-file")
        .arg(runner.path(&log))
        .arg(runner.path(&conf))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", runner.command));
    let mut running = Running(child);
    let pid = running.0.id();

    let started = Instant::now();
    let ready = wait_until(runner.start, || {
        log_text(&log).contains("ready: 2 entries") || matches!(running.0.try_wait(), Ok(Some(_)))
    });
    if !ready || !log_text(&log).contains("ready: 2 entries") {
        fail("the binary did not get ready", &log, &output);
    }
    if !wait_until(Duration::from_secs(30), || {
        accepts(direct) && accepts(proxied)
    }) {
        fail("the listeners do not accept", &log, &output);
    }
    println!("SMOKE start_seconds={:.1}", started.elapsed().as_secs_f64());
    if let Some(kb) = rss_kb(pid) {
        println!("SMOKE idle_rss_kb={kb}");
    }

    let t = Instant::now();
    assert_echo(direct, 1601, 8 * MIB);
    println!(
        "SMOKE direct_8MiB_each_way_seconds={:.2}",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    echo_exact(proxied, 1602, 8 * MIB);
    println!(
        "SMOKE squid_8MiB_each_way_seconds={:.2}",
        t.elapsed().as_secs_f64()
    );
    let via = format!("127.0.0.1:{squid_port}");
    if !wait_until(Duration::from_secs(10), || log_text(&log).contains(&via)) {
        fail("no log line names the squid hop", &log, &output);
    }

    // The reload: the direct entry goes, a proxied one comes.
    runner.write_config(&conf, &[proxied_line, added_line]);
    let reloaded = wait_until(Duration::from_secs(60), || {
        log_text(&log).contains("reload: 1 added, 1 removed") && accepts(added) && !accepts(direct)
    });
    if !reloaded {
        fail("the edit of the config was not picked up", &log, &output);
    }
    echo_exact(added, 1603, MIB);
    echo_exact(proxied, 1604, MIB);

    // The stop: SIGINT (Ctrl-C under wine).
    // SAFETY: kill(2) on the PID of our own child, which has not been waited for.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "kill -INT {pid}");
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = running.0.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        fail(
            "the binary did not stop within 60 s of SIGINT",
            &log,
            &output,
        );
    };
    let why = if runner.windows {
        "shutting down (Ctrl-C)"
    } else {
        "shutting down (SIGINT)"
    };
    if !status.success() || !log_text(&log).contains(why) {
        fail(
            &format!("not a clean stop: {status}, expected {why:?}"),
            &log,
            &output,
        );
    }
    if accepts(proxied) {
        fail("a listener still accepts after the stop", &log, &output);
    }
    let _ = fs::remove_dir_all(&dir);
}
