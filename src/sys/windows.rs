//! Windows: console control events instead of signals, `COMPUTERNAME` for
//! the host name, no permission bits (ACLs are not inspected).
//!
//! Windows runs a console control handler on a thread of its own, so the
//! handler hands the stop to the reactor through its channel and waker (the
//! `stop` closure) and returns. There is no reload request (the file watch
//! does it) and no snapshot request: `--status` reads the `metrics`
//! endpoint instead, which also works for a service that has no console.

use std::io;
use std::sync::{Condvar, Mutex, Once, PoisonError};
use std::time::Duration;

use mio::{Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::Signal;

type Stop = Box<dyn Fn(&'static str) + Send + Sync>;
type Bool = i32;
type HandlerRoutine = unsafe extern "system" fn(u32) -> Bool;

const TRUE: Bool = 1;
const FALSE: Bool = 0;
// wincon.h
const CTRL_C_EVENT: u32 = 0;
const CTRL_BREAK_EVENT: u32 = 1;
const CTRL_CLOSE_EVENT: u32 = 2;
const CTRL_LOGOFF_EVENT: u32 = 5;
const CTRL_SHUTDOWN_EVENT: u32 = 6;

/// How long a console close or system shutdown waits for `main` to finish.
/// Windows ends the process itself after about 5 s (20 s at shutdown), so
/// this is only an upper bound for the handler thread.
const EXIT_WAIT: Duration = Duration::from_secs(20);

// One function of kernel32 (always linked): declared here rather than
// pulling in a bindings crate for it.
#[link(name = "kernel32")]
extern "system" {
    fn SetConsoleCtrlHandler(handler: Option<HandlerRoutine>, add: Bool) -> Bool;
}

/// The running engine's way to stop, while there is one.
static STOP: Mutex<Option<Stop>> = Mutex::new(None);
/// Set by [`exiting`]: `main` is done, the process may end.
static EXITED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());
static INSTALL: Once = Once::new();

/// Runs on a thread Windows creates for the event. Returning TRUE means
/// handled; FALSE passes the event on (to the default handler, which ends
/// the process). After a close or shutdown event Windows ends the process
/// as soon as the handler returns, so those wait for `main` to finish.
unsafe extern "system" fn on_console_event(event: u32) -> Bool {
    let why = match event {
        CTRL_C_EVENT => "Ctrl-C",
        CTRL_BREAK_EVENT => "Ctrl-Break",
        CTRL_CLOSE_EVENT => "console closed",
        CTRL_SHUTDOWN_EVENT => "system shutdown",
        // Sent to services when any user logs off: not a reason to stop.
        CTRL_LOGOFF_EVENT => return TRUE,
        _ => return FALSE,
    };
    {
        let stop = STOP.lock().unwrap_or_else(PoisonError::into_inner);
        match stop.as_ref() {
            Some(stop) => stop(why),
            None => return FALSE, // no engine (yet, or any more): default
        }
    }
    if event == CTRL_CLOSE_EVENT || event == CTRL_SHUTDOWN_EVENT {
        let (lock, exited) = &EXITED;
        let done = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = exited.wait_timeout_while(done, EXIT_WAIT, |done| !*done);
    }
    TRUE
}

/// Holds the console control handler's link to the engine.
pub struct Signals;

impl Signals {
    pub fn new(_registry: &Registry, _token: Token, stop: Stop) -> io::Result<Signals> {
        *STOP.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop);
        let mut installed = Ok(());
        INSTALL.call_once(|| {
            // SAFETY: a handler with the PHANDLER_ROUTINE signature; it
            // stays valid for the life of the process (a plain function).
            if unsafe { SetConsoleCtrlHandler(Some(on_console_event), TRUE) } == FALSE {
                installed = Err(io::Error::last_os_error());
            }
        });
        installed.map(|()| Signals)
    }

    pub fn pending(&mut self) -> Vec<Signal> {
        Vec::new()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // Events from now on get the default handling.
        *STOP.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

pub fn exiting() {
    let (lock, exited) = &EXITED;
    *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
    exited.notify_all();
}

/// socket2 makes Windows sockets not inheritable (WSA_FLAG_NO_HANDLE_INHERIT).
pub fn stream_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Winsock reports a non-blocking connect under way as `WSAEWOULDBLOCK`,
/// which std maps to `WouldBlock` (mio's own `connect` checks the same).
pub fn connect_in_progress(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The NetBIOS computer name, which is what Windows' own NTLM sends.
pub fn host_name() -> Option<String> {
    std::env::var("COMPUTERNAME").ok().filter(|n| !n.is_empty())
}

pub fn readable_by_others(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// MIT Kerberos for Windows.
#[cfg(target_pointer_width = "64")]
pub const GSSAPI_LIBRARIES: &[&str] = &["gssapi64.dll"];
#[cfg(not(target_pointer_width = "64"))]
pub const GSSAPI_LIBRARIES: &[&str] = &["gssapi32.dll"];
