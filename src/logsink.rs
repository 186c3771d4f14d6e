//! The log's output: a buffer flushed once per reactor tick.
//!
//! Owns the writer behind env_logger (stderr or `--log-file`). Tunnel open
//! and close lines come in bursts of thousands a second under load; writing
//! each with its own `write(2)` costs more than the forwarding itself, so
//! lines collect in a buffer that the reactor flushes at the end of every
//! tick, before it waits in `poll` again. A line therefore waits at most one
//! tick (microseconds to milliseconds) and never while the process is idle.
//! Lines logged outside the reactor thread (start-up, exit) are flushed by
//! the same call or when the buffer fills.

use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, OnceLock};

type Shared = Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>;

static SINK: OnceLock<Shared> = OnceLock::new();

/// The writer handed to env_logger: appends to the shared buffer.
pub struct TickWriter(Shared);

impl Write for TickWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut w) => w.write(buf),
            Err(_) => Ok(buf.len()), // a panicked logger thread: drop the line
        }
    }

    /// Deliberately does nothing: env_logger flushes its target after every
    /// record, which would turn the buffer back into one `write(2)` a line.
    /// The buffer is written by [`flush`] (every reactor tick) or when full.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wraps `out` in the per-tick buffer and returns the writer for env_logger.
/// Only the first call installs a buffer; later calls get a writer to it.
pub fn install(out: Box<dyn Write + Send>) -> TickWriter {
    let shared =
        SINK.get_or_init(|| Arc::new(Mutex::new(BufWriter::with_capacity(16 * 1024, out))));
    TickWriter(Arc::clone(shared))
}

/// Writes out what the buffer holds. Cheap when it is empty; a no-op when
/// no sink was installed (library use, tests).
pub fn flush() {
    if let Some(shared) = SINK.get() {
        if let Ok(mut w) = shared.lock() {
            if !w.buffer().is_empty() {
                // Nowhere to report a failing log write; the next one retries.
                let _ = w.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Counts the writes that reach the underlying output.
    struct Counting(mpsc::Sender<usize>);

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_only_when_the_tick_flushes() {
        let (tx, rx) = mpsc::channel();
        let mut w = install(Box::new(Counting(tx)));
        // What env_logger does for each record: write, then flush.
        for _ in 0..3 {
            w.write_all(b"a line\n").unwrap();
            w.flush().unwrap();
        }
        assert!(
            rx.try_recv().is_err(),
            "nothing written before the tick's flush"
        );
        flush();
        assert_eq!(rx.try_iter().sum::<usize>(), 21, "three lines in one write");
    }
}
