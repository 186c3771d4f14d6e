//! Reloading the configuration: watching the file and reading it off the
//! reactor thread.
//!
//! Owns one thread that waits for triggers (a change seen by `notify`, or
//! [`Reloader::trigger`] on SIGHUP), lets a burst of them settle, reads and
//! parses the file with [`config::load`], and hands the result to the
//! reactor through a callback (which sends it on the reactor's channel and
//! wakes the poll). Never touches sockets.
//!
//! The folder holding the file is watched, not the file: editors that save
//! by writing a new file and renaming it over the old one, or by deleting
//! and re-creating it, replace the inode a file watch would follow.
//!
//! What a new configuration changes is decided by [`diff`], a pure function
//! of the running and the new entries; the reactor applies its result.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use crate::config::{self, Config};

mod diff;
pub use diff::{diff, Diff};

/// How long a burst of changes must be quiet before the file is read.
const SETTLE: Duration = Duration::from_millis(100);

/// A running reload thread. Dropping it stops watching.
pub struct Reloader {
    trigger: Sender<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Reloader {
    /// Asks for a reload (SIGHUP). Returns at once; the file is read on the
    /// reload thread.
    pub fn trigger(&self) {
        // Fails only if the thread is gone, which happens only at exit.
        let _ = self.trigger.send(());
    }
}

/// Starts the reload thread for `path`; with `watch`, changes to the file
/// trigger reloads on their own. `deliver` receives each parse result.
///
/// # Errors
/// When the thread cannot be started or the folder cannot be watched.
pub fn spawn<F>(path: PathBuf, watch: bool, deliver: F) -> io::Result<Reloader>
where
    F: Fn(Result<Config, Vec<config::Error>>) + Send + 'static,
{
    let (trigger, triggers) = mpsc::channel::<()>();
    let watcher = if watch {
        Some(watch_folder(&path, trigger.clone())?)
    } else {
        None
    };
    thread::Builder::new()
        .name("reload".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            while triggers.recv().is_ok() {
                // Coalesce a burst: editors write, rename and chmod in a row.
                loop {
                    match triggers.recv_timeout(SETTLE) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                let loaded = config::load(&path);
                if let Ok(c) = &loaded {
                    for w in config::warnings(c, &path.display().to_string()) {
                        log::warn!("{w}");
                    }
                }
                deliver(loaded);
            }
        })?;
    Ok(Reloader {
        trigger,
        _watcher: watcher,
    })
}

fn watch_folder(path: &Path, trigger: Sender<()>) -> io::Result<notify::RecommendedWatcher> {
    let name: OsString = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "config path has no file name"))?
        .to_os_string();
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let to_io = |e: notify::Error| io::Error::other(e.to_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Our own reading of the file must not trigger another reload.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == Some(&name)) {
            let _ = trigger.send(());
        }
    })
    .map_err(to_io)?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(to_io)?;
    Ok(watcher)
}
