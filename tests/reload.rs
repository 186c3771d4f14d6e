//! Reloading the configuration while the binary runs (SPEC "Reload"), and
//! the signals (SPEC "Signals").
//!
//! Every test runs the binary on a config file in a fresh directory, edits
//! that file the way editors and people do (in place, by rename, delete then
//! create), and waits for the `reload:` summary line or for a port to listen
//! or stop listening: never for a fixed time, except where the point is that
//! nothing happens (`--no-watch`).

mod common;

use common::*;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// How long a reload may take to show up after an edit or a signal.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an edit is given to (wrongly) take effect when it must not.
const NOTHING_HAPPENS: Duration = Duration::from_millis(1500);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A direct entry from 127.0.0.1:`port` to `backend`, with `options`.
fn entry(port: u16, backend: &Backend, options: &str) -> String {
    format!("127.0.0.1:{port} 127.0.0.1 {} {options}", backend.port())
        .trim_end()
        .to_owned()
        + "\n"
}

// ---------------------------------------------------------------------------
// Editing the file
// ---------------------------------------------------------------------------

/// Rewrites the file in place (same inode: truncate and write).
fn write_in_place(path: &Path, text: &str) {
    let inode = fs::metadata(path).expect("stat config").ino();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open config for writing");
    f.write_all(text.as_bytes()).expect("write config");
    f.sync_all().expect("sync config");
    drop(f);
    assert_eq!(
        fs::metadata(path).expect("stat config").ino(),
        inode,
        "an in-place write keeps the inode"
    );
}

/// Writes a temporary file beside the config, then renames it over the
/// config, as most editors save.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("conf.tmp~");
    fs::write(&tmp, text).expect("write temporary config");
    fs::rename(&tmp, path).expect("rename over config");
}

/// Every `reload: ` summary line so far.
fn reload_lines(run: &Running) -> Vec<String> {
    run.log_lines("reload: ")
}

/// Waits for a `reload: ` line after the first `*seen` ones that contains
/// `needle` (e.g. `"1 added, 0 removed, 0 changed"`), and moves `*seen` past
/// it. Panics with the log after [`RELOAD_TIMEOUT`].
fn wait_reload(run: &Running, seen: &mut usize, needle: &str) -> String {
    let mut found = None;
    let ok = wait_until(RELOAD_TIMEOUT, || {
        let lines = reload_lines(run);
        found = lines
            .iter()
            .enumerate()
            .skip(*seen)
            .find(|(_, l)| l.contains(needle))
            .map(|(i, l)| (i, l.clone()));
        found.is_some()
    });
    match found {
        Some((i, line)) if ok => {
            *seen = i + 1;
            line
        }
        _ => panic!(
            "no new \"reload: ...{needle}...\" line within {RELOAD_TIMEOUT:?} (had {seen} before)\n{}",
            run.diagnostics()
        ),
    }
}

/// Waits until nothing listens on `port` any more and a connect is refused.
fn wait_not_listening(run: &Running, port: u16) {
    let ok = wait_until(RELOAD_TIMEOUT, || {
        !is_listening(addr(port))
            && matches!(
                TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
            )
    });
    assert!(
        ok,
        "port {port} still accepts after its entry was removed\n{}",
        run.diagnostics()
    );
}

// ---------------------------------------------------------------------------
// A long tunnel whose data moves in phases
// ---------------------------------------------------------------------------

/// A tunnel to an echo backend that the test feeds one phase at a time, so
/// that data demonstrably moves between reloads; checked byte-exact at the
/// end.
struct LongTunnel {
    writer: TcpStream,
    source: Payload,
    sent: u64,
    received: Arc<AtomicU64>,
    reader: thread::JoinHandle<io::Result<StreamCheck>>,
    seed: u64,
}

impl LongTunnel {
    fn open(port: u16, seed: u64) -> LongTunnel {
        let stream = connect_port(port);
        let received = Arc::new(AtomicU64::new(0));
        let mut reader_stream = stream.try_clone().expect("try_clone");
        let counter = received.clone();
        let reader = thread::spawn(move || {
            let mut check = StreamCheck::new(seed);
            let mut buf = vec![0; 64 * 1024];
            loop {
                match reader_stream.read(&mut buf) {
                    Ok(0) => return Ok(check),
                    Ok(n) => {
                        check.feed(&buf[..n]);
                        counter.store(check.received(), Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("after {} bytes: {e}", check.received()),
                        ))
                    }
                }
            }
        });
        LongTunnel {
            writer: stream,
            source: Payload::new(seed),
            sent: 0,
            received,
            reader,
            seed,
        }
    }

    /// Sends `len` more bytes and waits until their echo is back.
    fn phase(&mut self, len: u64, run: &Running) {
        let mut buf = vec![0; len as usize];
        self.source.fill(&mut buf);
        self.writer
            .write_all(&buf)
            .unwrap_or_else(|e| panic!("long tunnel: write after {} bytes: {e}", self.sent));
        self.sent += len;
        let want = self.sent;
        assert!(
            wait_until(IO_TIMEOUT, || self.received.load(Ordering::SeqCst) >= want),
            "long tunnel: only {} of {want} bytes echoed\n{}",
            self.received.load(Ordering::SeqCst),
            run.diagnostics()
        );
    }

    /// Half-closes, reads the rest and checks everything byte-exact.
    fn finish(self) -> u64 {
        self.writer
            .shutdown(Shutdown::Write)
            .expect("shutdown(Write)");
        let check = self
            .reader
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("long tunnel: read: {e}"));
        check.assert_complete(self.sent, &format!("long tunnel (seed {})", self.seed));
        self.sent
    }
}

// ---------------------------------------------------------------------------
// Reload: add, change, remove
// ---------------------------------------------------------------------------

/// One tunnel through entry A moves data across three reloads: one adding
/// C, one changing A's destination, one removing B. Each takes effect for
/// new tunnels; the open one keeps its destination and loses no byte.
#[test]
fn reload_adds_changes_and_removes_entries_while_a_tunnel_moves_data() {
    let old_dest = echo_backend();
    let new_dest = echo_backend();
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let mut run = spawn_binary(&(entry(pa, &old_dest, "") + &entry(pb, &old_dest, "")));
    let mut seen = 0;
    let mut tunnel = LongTunnel::open(pa, 1);
    tunnel.phase(MIB, &run);
    assert_eq!(
        old_dest.accepted(),
        1,
        "the long tunnel goes to the old destination"
    );

    write_by_rename(
        &run.config_path,
        &(entry(pa, &old_dest, "") + &entry(pb, &old_dest, "") + &entry(pc, &old_dest, "")),
    );
    wait_reload(&run, &mut seen, "reload: 1 added, 0 removed, 0 changed");
    run.wait_listening(&[addr(pc)], RELOAD_TIMEOUT);
    assert_echo(pc, 2, 64 * 1024);
    tunnel.phase(MIB, &run);

    write_by_rename(
        &run.config_path,
        &(entry(pa, &new_dest, "") + &entry(pb, &old_dest, "") + &entry(pc, &old_dest, "")),
    );
    wait_reload(&run, &mut seen, "reload: 0 added, 0 removed, 1 changed");
    let (old_before, new_before) = (old_dest.accepted(), new_dest.accepted());
    assert_echo(pa, 3, 64 * 1024);
    assert_eq!(
        (old_dest.accepted(), new_dest.accepted()),
        (old_before, new_before + 1),
        "a tunnel opened after the change goes to the new destination"
    );
    tunnel.phase(MIB, &run);

    write_by_rename(
        &run.config_path,
        &(entry(pa, &new_dest, "") + &entry(pc, &old_dest, "")),
    );
    wait_reload(&run, &mut seen, "reload: 0 added, 1 removed, 0 changed");
    wait_not_listening(&run, pb);
    tunnel.phase(MIB, &run);

    let total = tunnel.finish();
    assert_eq!(total, 4 * MIB);
    run.wait_log(&format!("closed up={total} down={total} "), IO_TIMEOUT);
    // A and C still serve after all that.
    assert_echo(pa, 4, 1024);
    assert_echo(pc, 5, 1024);
    run.assert_alive();
}

/// A client connecting every 5 ms for at least 2 s, and three more
/// connecting back to back, through an entry that is changed ten times
/// (destination and options, saved by rename): no connection is ever
/// refused or reset, and every echo is byte-exact.
#[test]
fn reload_never_refuses_a_client_of_a_changed_entry() {
    let first = echo_backend();
    let second = echo_backend();
    let port = free_port();
    let run = spawn_binary(&entry(port, &first, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // One client paced at 5 ms, three more connecting back to back, so that
    // connections are arriving (or waiting in the backlog) at every moment.
    let clients: Vec<_> = [Some(Duration::from_millis(5)), None, None, None]
        .into_iter()
        .enumerate()
        .map(|(c, pause)| {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            thread::spawn(move || {
                let started = Instant::now();
                let mut i = 0u64;
                while !(stop.load(Ordering::SeqCst) && started.elapsed() >= Duration::from_secs(2))
                {
                    i += 1;
                    if let Err(e) = short_echo(port, (c as u64) << 32 | i) {
                        failures.lock().expect("failures").push(format!(
                            "client {c}, connection {i} at {:?}: {e}",
                            started.elapsed()
                        ));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    if let Some(pause) = pause {
                        thread::sleep(pause);
                    }
                }
            })
        })
        .collect();
    let mut seen = 0;
    let variants = [
        entry(port, &second, ""),
        entry(port, &first, "buffer=16k"),
        entry(port, &second, "idle-timeout=30s"),
        entry(port, &first, "connect-timeout=5s"),
        entry(port, &second, "buffer=32k keepalive=off"),
    ];
    // Ten changes: each one is a chance to catch a listener closed and bound
    // again (connections in its backlog reset, new ones refused).
    for text in variants.iter().chain(&variants) {
        // Let the client get through a few connections between changes.
        let before = done.load(Ordering::SeqCst);
        assert!(
            wait_until(IO_TIMEOUT, || done.load(Ordering::SeqCst) >= before + 10),
            "the client loop is stuck\n{}",
            run.diagnostics()
        );
        write_by_rename(&run.config_path, text);
        wait_reload(&run, &mut seen, "reload: 0 added, 0 removed, 1 changed");
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let failures = failures.lock().expect("failures");
    assert!(
        failures.is_empty(),
        "{} of {} connections failed during reloads:\n{}\n{}",
        failures.len(),
        done.load(Ordering::SeqCst),
        failures.join("\n"),
        run.diagnostics()
    );
    assert!(
        first.accepted() > 0 && second.accepted() > 0,
        "both destinations served (first {}, second {})",
        first.accepted(),
        second.accepted()
    );
}

/// Connects, sends 64 bytes, half-closes and expects them back, byte-exact.
fn short_echo(port: u16, seed: u64) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))?;
    prepare(&s);
    let data = payload(seed, 64);
    s.write_all(&data)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != data {
        return Err(io::Error::other(format!(
            "echo differs: {} bytes back",
            back.len()
        )));
    }
    Ok(())
}

/// An edit with an error changes nothing: the log names FILE:LINE, the old
/// entry keeps its old destination, the new entry does not listen. Fixing
/// the file then applies it (the watcher survived the failed reload).
#[test]
fn reload_of_an_invalid_file_keeps_the_running_configuration() {
    let old_dest = echo_backend();
    let new_dest = echo_backend();
    let (pa, pc) = (free_port(), free_port());
    let mut run = spawn_binary(&entry(pa, &old_dest, ""));
    let mut seen = 0;

    let broken = format!(
        "# A changes, C is added, and line 3 is wrong\n{}{}",
        entry(pa, &new_dest, ""),
        entry(pc, &old_dest, "no-such-option=1")
    );
    write_by_rename(&run.config_path, &broken);
    run.wait_log("reload failed", RELOAD_TIMEOUT);
    let line = run.wait_log("tunnels.conf:3:", RELOAD_TIMEOUT);
    assert!(
        line.contains("no-such-option"),
        "the error names the field at fault: {line}"
    );
    assert!(reload_lines(&run).is_empty(), "nothing was applied");
    assert!(!is_listening(addr(pc)), "the new entry must not listen");
    assert_echo(pa, 1, 4096);
    assert_eq!(
        (old_dest.accepted(), new_dest.accepted()),
        (1, 0),
        "the old entry keeps its old destination"
    );

    let fixed = format!(
        "# A changes, C is added\n{}{}",
        entry(pa, &new_dest, ""),
        entry(pc, &old_dest, "")
    );
    write_by_rename(&run.config_path, &fixed);
    wait_reload(&run, &mut seen, "reload: 1 added, 0 removed, 1 changed");
    run.wait_listening(&[addr(pc)], RELOAD_TIMEOUT);
    assert_echo(pa, 2, 4096);
    assert_echo(pc, 3, 4096);
    assert_eq!(new_dest.accepted(), 1, "A now goes to the new destination");
    run.assert_alive();
}

// ---------------------------------------------------------------------------
// Ways of saving a file
// ---------------------------------------------------------------------------

/// Starts A, lets `edit` add B, and checks B serves after the reload.
fn picked_up(edit: impl FnOnce(&Running, &str)) {
    let dest = echo_backend();
    let (pa, pb) = (free_port(), free_port());
    let mut run = spawn_binary(&entry(pa, &dest, ""));
    let mut seen = 0;
    let text = entry(pa, &dest, "") + &entry(pb, &dest, "");
    edit(&run, &text);
    wait_reload(&run, &mut seen, "reload: 1 added, 0 removed, 0 changed");
    run.wait_listening(&[addr(pb)], RELOAD_TIMEOUT);
    assert_echo(pb, 1, 4096);
    assert_echo(pa, 2, 4096);
}

#[test]
fn reload_picks_up_an_in_place_write() {
    picked_up(|run, text| write_in_place(&run.config_path, text));
}

#[test]
fn reload_picks_up_a_rename_over_the_file() {
    picked_up(|run, text| write_by_rename(&run.config_path, text));
}

/// The file is deleted (the running entries keep serving: a missing file
/// is a failed reload at worst), then created again with a new entry.
#[test]
fn reload_picks_up_delete_then_create() {
    picked_up(|run, text| {
        fs::remove_file(&run.config_path).expect("delete config");
        // Whatever the program made of the deletion, the old entry serves.
        let pa = listen_addrs_of(text)[0].port();
        assert_echo(pa, 3, 4096);
        fs::write(&run.config_path, text).expect("create config");
    });
}

// ---------------------------------------------------------------------------
// --no-watch and SIGHUP
// ---------------------------------------------------------------------------

/// Under `--no-watch` an edit is not applied, however long one waits; a
/// SIGHUP applies it.
#[test]
fn no_watch_ignores_edits_until_sighup() {
    let dest = echo_backend();
    let (pa, pb) = (free_port(), free_port());
    let mut run = spawn_binary_with(&entry(pa, &dest, ""), &["-v", "--no-watch"]);
    let mut seen = 0;
    write_in_place(
        &run.config_path,
        &(entry(pa, &dest, "") + &entry(pb, &dest, "")),
    );
    assert!(
        !run.log_contains("reload", NOTHING_HAPPENS),
        "--no-watch reloaded on an edit\n{}",
        run.diagnostics()
    );
    assert!(!is_listening(addr(pb)), "--no-watch applied an edit");
    run.signal(libc::SIGHUP);
    wait_reload(&run, &mut seen, "reload: 1 added, 0 removed, 0 changed");
    run.wait_listening(&[addr(pb)], RELOAD_TIMEOUT);
    assert_echo(pb, 1, 4096);
    assert_echo(pa, 2, 4096);
}

/// A removed entry's port stops accepting, but a tunnel opened through it
/// before runs on to the end, byte-exact.
#[test]
fn removed_entry_stops_listening_but_its_open_tunnel_runs_on() {
    let dest = echo_backend();
    let (pa, pb) = (free_port(), free_port());
    let run = spawn_binary(&(entry(pa, &dest, "") + &entry(pb, &dest, "")));
    let mut seen = 0;
    let mut tunnel = LongTunnel::open(pb, 7);
    tunnel.phase(MIB, &run);
    write_by_rename(&run.config_path, &entry(pa, &dest, ""));
    wait_reload(&run, &mut seen, "reload: 0 added, 1 removed, 0 changed");
    wait_not_listening(&run, pb);
    tunnel.phase(MIB, &run);
    tunnel.phase(MIB, &run);
    let total = tunnel.finish();
    run.wait_log(&format!("closed up={total} down={total} "), IO_TIMEOUT);
    assert_echo(pa, 8, 4096);
}

/// `auth-file` (relative to the config's folder) is read again on reload:
/// tunnels opened after a SIGHUP carry the new credentials, and neither
/// password ever shows in the log.
#[test]
fn auth_file_is_read_again_on_reload() {
    let dest = echo_backend();
    let proxy = FakeProxy::scripted(ok_relay_script());
    let port = free_port();
    let dir = unique_dir("authfile");
    let (first, second) = ("pw-first-7d1c", "pw-second-93ab");
    write_by_rename(&dir.join("proxy.cred"), &format!("alice:{first}\n"));
    let config = format!(
        "127.0.0.1:{port} 127.0.0.1 {} 127.0.0.1 {} auth-file=proxy.cred\n",
        dest.port(),
        proxy.port()
    );
    let mut run = start_binary_in(&dir, &config, &["-v"]);
    run.wait_listening(&[addr(port)], START_TIMEOUT);
    let mut seen = 0;

    assert_echo(port, 1, 4096);
    let basic = |pw: &str| {
        format!(
            "Proxy-Authorization: Basic {}",
            common::proxies::base64(format!("alice:{pw}").as_bytes())
        )
    };
    let heads = proxy.wait_heads(1, IO_TIMEOUT);
    let head = String::from_utf8_lossy(&heads[0]).into_owned();
    assert!(head.contains(&basic(first)), "first request: {head:?}");

    write_by_rename(&dir.join("proxy.cred"), &format!("alice:{second}\n"));
    run.signal(libc::SIGHUP);
    wait_reload(&run, &mut seen, "reload: ");
    assert_echo(port, 2, 4096);
    let heads = proxy.wait_heads(2, IO_TIMEOUT);
    let head = String::from_utf8_lossy(&heads[1]).into_owned();
    assert!(
        head.contains(&basic(second)),
        "request after the reload: {head:?}"
    );
    let log = run.log();
    for secret in [first, second] {
        assert!(!log.contains(secret), "the log shows a password:\n{log}");
    }
    for secret in [basic(first), basic(second)] {
        let b64 = secret.rsplit(' ').next().expect("base64 part");
        assert!(!log.contains(b64), "the log shows a Basic header:\n{log}");
    }
    drop(run);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------

/// Opens a tunnel to an echo backend and checks it works; leaves it open.
fn open_tunnel(port: u16) -> TcpStream {
    let mut s = connect_port(port);
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"ping");
    s
}

/// SIGUSR1 logs a snapshot (summary, the entry, the open tunnel) and the
/// process keeps serving, open tunnel included.
#[test]
fn sigusr1_logs_a_snapshot_and_keeps_serving() {
    let dest = echo_backend();
    let port = free_port();
    let mut run = spawn_binary(&entry(port, &dest, ""));
    let mut tunnel = open_tunnel(port);
    run.signal(libc::SIGUSR1);
    run.wait_log("snapshot: tunnel ", IO_TIMEOUT);
    let summary = run.wait_log("snapshot: 1 entr", IO_TIMEOUT);
    assert!(
        summary.contains("1 open tunnel"),
        "the summary counts the open tunnel: {summary}"
    );
    run.wait_log(&format!("snapshot: entry 127.0.0.1:{port} "), IO_TIMEOUT);
    let line = run.wait_log("snapshot: tunnel ", IO_TIMEOUT);
    assert!(
        line.contains("state="),
        "the tunnel line shows its state: {line}"
    );
    run.assert_alive();
    tunnel.write_all(b"pong").expect("write after snapshot");
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).expect("read after snapshot");
    assert_eq!(&buf, b"pong");
    assert_echo(port, 1, 4096);
}

/// SIGTERM with a tunnel open: exit status 0 within a second, the log says
/// why, and the client's connection is closed.
#[test]
fn sigterm_exits_zero_within_one_second() {
    let dest = echo_backend();
    let port = free_port();
    let mut run = spawn_binary(&entry(port, &dest, ""));
    let mut tunnel = open_tunnel(port);
    let sent = Instant::now();
    run.signal(libc::SIGTERM);
    let status = run
        .wait_exit(Duration::from_secs(1))
        .unwrap_or_else(|| panic!("still running 1 s after SIGTERM\n{}", run.diagnostics()));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    eprintln!("exited {:?} after SIGTERM", sent.elapsed());
    assert!(
        run.log_contains("shutting down (SIGTERM)", Duration::from_secs(1)),
        "{}",
        run.diagnostics()
    );
    expect_closed(&mut tunnel, Duration::from_secs(5), "tunnel after SIGTERM");
}

#[test]
fn sigint_exits_zero() {
    let dest = echo_backend();
    let port = free_port();
    let mut run = spawn_binary(&entry(port, &dest, ""));
    let mut tunnel = open_tunnel(port);
    run.signal(libc::SIGINT);
    let status = run
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGINT\n{}", run.diagnostics()));
    assert_eq!(status.code(), Some(0), "exit status after SIGINT");
    assert!(
        run.log_contains("shutting down (SIGINT)", Duration::from_secs(1)),
        "{}",
        run.diagnostics()
    );
    expect_closed(&mut tunnel, Duration::from_secs(5), "tunnel after SIGINT");
}
