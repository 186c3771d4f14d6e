//! Unix: signals through signal-hook's self-pipe (a mio source), libc for
//! `gethostname` and `EINPROGRESS`, mode bits for file permissions.

use std::io;
use std::os::unix::fs::PermissionsExt;

use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use socket2::{Domain, Protocol, Socket, Type};

use super::Signal;

/// SIGHUP, SIGUSR1, SIGINT and SIGTERM, readable on a mio token. The
/// handler only writes to a pipe; the reactor reads what came on its own
/// thread (STYLE: signal handlers only note the signal and wake the loop).
pub struct Signals(signal_hook_mio::v1_0::Signals);

impl Signals {
    pub fn new(
        registry: &Registry,
        token: Token,
        _stop: Box<dyn Fn(&'static str) + Send + Sync>,
    ) -> io::Result<Signals> {
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGHUP, SIGUSR1, SIGINT, SIGTERM])?;
        registry.register(&mut signals, token, Interest::READABLE)?;
        Ok(Signals(signals))
    }

    pub fn pending(&mut self) -> Vec<Signal> {
        self.0
            .pending()
            .filter_map(|signal| match signal {
                SIGHUP => Some(Signal::Reload),
                SIGUSR1 => Some(Signal::Snapshot),
                SIGINT => Some(Signal::Stop("SIGINT")),
                SIGTERM => Some(Signal::Stop("SIGTERM")),
                _ => None,
            })
            .collect()
    }
}

pub fn exiting() {}

// The targets where socket2 offers SOCK_NONBLOCK.
#[cfg(any(
    target_os = "android",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "illumos",
    target_os = "linux",
    target_os = "netbsd",
    target_os = "openbsd"
))]
pub fn stream_socket(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
}

// macOS and the rest: socket2 sets close-on-exec (and on Apple systems
// SO_NOSIGPIPE) itself.
#[cfg(not(any(
    target_os = "android",
    target_os = "dragonfly",
    target_os = "freebsd",
    target_os = "fuchsia",
    target_os = "illumos",
    target_os = "linux",
    target_os = "netbsd",
    target_os = "openbsd"
)))]
pub fn stream_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

pub fn connect_in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS)
}

pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer and its length; gethostname NUL-terminates
    // within it on success (truncation is checked for below).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

pub fn readable_by_others(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// MIT's library, else Heimdal's (Linux, the BSDs). On macOS the system's
/// GSS framework (Heimdal underneath, the same C API), then an MIT build
/// from Homebrew or MacPorts on the loader's path.
#[cfg(not(target_os = "macos"))]
pub const GSSAPI_LIBRARIES: &[&str] = &["libgssapi_krb5.so.2", "libgssapi.so.3"];
#[cfg(target_os = "macos")]
pub const GSSAPI_LIBRARIES: &[&str] = &[
    "/System/Library/Frameworks/GSS.framework/GSS",
    "libgssapi_krb5.2.2.dylib",
];
