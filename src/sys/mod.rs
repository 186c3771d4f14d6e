//! What differs between operating systems, in one place: how the process is
//! asked to stop, reload or log a snapshot ([`Signals`]), how a non-blocking
//! connect says it is under way, this host's name for NTLM, whether a file's
//! permissions let other users read it, and the GSSAPI library names.
//!
//! Everything else (sockets through mio and socket2, `SO_LINGER` resets,
//! keepalive, file watching through notify, TLS) is portable already.
//! The rest of the crate calls only the items here, never `cfg(unix)` or
//! `cfg(windows)` itself; each item is implemented in [`unix`] or
//! [`windows`], and nothing here logs or touches the reactor's state.
//!
//! | | Unix | Windows |
//! |---|---|---|
//! | stop | SIGINT, SIGTERM | Ctrl-C, Ctrl-Break, console close, system shutdown |
//! | reload | the file watch; SIGHUP | the file watch |
//! | snapshot | SIGUSR1 (the log); `--status` | `--status` (reads the `metrics` endpoint) |

use std::io;

use mio::{Registry, Token};
use socket2::{Domain, Socket};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

/// A request from outside the process, as the reactor acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Read the config file again (SIGHUP).
    Reload,
    /// Log the snapshot (SIGUSR1).
    Snapshot,
    /// Close every listener and tunnel and return; the reason names the
    /// request (`SIGTERM`, `Ctrl-C`, …).
    Stop(&'static str),
}

/// The platform's requests to the process: Unix signals read from a mio
/// source, or Windows console control events, which arrive on a thread of
/// their own and are handed to `stop`.
pub struct Signals(imp::Signals);

impl Signals {
    /// Starts receiving the requests. On Unix they become readable on
    /// `token` of `registry` and are read with [`Signals::pending`]; on
    /// Windows the console control handler calls `stop` (from the thread
    /// Windows runs it on) and `pending` has nothing.
    ///
    /// # Errors
    /// Installing the handlers or registering their source.
    pub fn new<F>(registry: &Registry, token: Token, stop: F) -> io::Result<Signals>
    where
        F: Fn(&'static str) + Send + Sync + 'static,
    {
        imp::Signals::new(registry, token, Box::new(stop)).map(Signals)
    }

    /// The requests received since the last call (after `token` fired).
    pub fn pending(&mut self) -> Vec<Signal> {
        self.0.pending()
    }
}

/// Called by `main` as the very last thing before it returns: a Windows
/// console close waits for it (up to the few seconds Windows grants) so the
/// tunnels are closed and the log is flushed before the process is ended.
/// Does nothing on Unix.
pub fn exiting() {
    imp::exiting();
}

/// Whether a short read or write may stand for the `WouldBlock` that the
/// next call would return (the tunnel then skips that call). True with
/// epoll and kqueue, which raise a new edge when the queue changes anyway.
/// False on Windows: mio emulates edges there and re-arms a socket only
/// after one of its operations returned `WouldBlock`, so skipping that call
/// leaves the socket without another event (a tunnel stalled after about
/// 128 KiB under wine until this was found).
pub const SHORT_IO_MEANS_WOULD_BLOCK: bool = cfg!(unix);

/// A non-blocking, close-on-exec (not inherited) TCP socket of `domain`:
/// one `socket(2)` call with `SOCK_NONBLOCK` where there is one (Linux,
/// the BSDs), else made non-blocking right after (macOS, Windows).
///
/// # Errors
/// What `socket(2)` says: EMFILE/ENFILE when out of descriptors.
pub fn stream_socket(domain: Domain) -> io::Result<Socket> {
    imp::stream_socket(domain)
}

/// True when `e`, returned by a non-blocking `connect`, only means the
/// connection is under way (`EINPROGRESS`; `WSAEWOULDBLOCK` on Windows).
pub fn connect_in_progress(e: &io::Error) -> bool {
    imp::connect_in_progress(e)
}

/// This host's name as the OS reports it (`gethostname`; the NetBIOS name
/// in `COMPUTERNAME` on Windows), or `None`.
pub fn host_name() -> Option<String> {
    imp::host_name()
}

/// The permission bits (e.g. `0o644`) of a file other users can read, or
/// `None` when they cannot or when the platform has no such bits (Windows
/// files are guarded by ACLs, which this does not inspect).
pub fn readable_by_others(meta: &std::fs::Metadata) -> Option<u32> {
    imp::readable_by_others(meta)
}

/// The GSSAPI libraries Negotiate tries, in order, when
/// `HTTPTUNNELING_GSSAPI_LIBRARY` does not name one.
pub const GSSAPI_LIBRARIES: &[&str] = imp::GSSAPI_LIBRARIES;
