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

use std::cell::Cell;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Writes `record` as env_logger's default format does (with colours off
/// and second precision): `[2026-12-02T09:10:20Z INFO  module::path] text`.
///
/// The same bytes at a fraction of the cost: the timestamp is rendered once
/// a second (per thread) instead of once a line, and the header goes out in
/// one write. Tunnel lines come by the thousand a second under load, where
/// env_logger's own header was a third of the reactor's user time.
///
/// # Errors
/// What writing to `out` reports.
pub fn format(out: &mut dyn Write, record: &log::Record<'_>) -> io::Result<()> {
    let mut head = [0u8; 32];
    head[0] = b'[';
    head[1..21].copy_from_slice(&timestamp(SystemTime::now()));
    head[21] = b' ';
    let level: &[u8; 5] = match record.level() {
        log::Level::Error => b"ERROR",
        log::Level::Warn => b"WARN ",
        log::Level::Info => b"INFO ",
        log::Level::Debug => b"DEBUG",
        log::Level::Trace => b"TRACE",
    };
    head[22..27].copy_from_slice(level);
    match record.module_path() {
        Some(module) => {
            head[27] = b' ';
            out.write_all(&head[..28])?;
            out.write_all(module.as_bytes())?;
        }
        None => out.write_all(&head[..27])?,
    }
    out.write_all(b"] ")?;
    out.write_fmt(*record.args())?;
    out.write_all(b"\n")
}

thread_local! {
    /// The last second rendered and its text.
    static STAMP: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `time` as RFC 3339 in UTC to the second, `2026-12-02T09:10:20Z`.
fn timestamp(time: SystemTime) -> [u8; 20] {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    STAMP.with(|cache| {
        let (cached, text) = cache.get();
        if cached == secs {
            return text;
        }
        let text = render(secs);
        cache.set((secs, text));
        text
    })
}

/// Renders seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian calendar; days to a civil date after Howard Hinnant's
/// `civil_from_days`).
fn render(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, value: u64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, rem / 3600, 2);
    put(14, rem % 3600 / 60, 2);
    put(17, rem % 60, 2);
    out
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
    fn timestamps_are_rfc3339_seconds_in_utc() {
        let at = |secs: u64| String::from_utf8(render(secs).to_vec()).unwrap();
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_116_220), "2026-12-01T09:10:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        // Every day of four centuries against a day-by-day count.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for day in 0..146_097u64 {
            let want = format!("{y:04}-{m:02}-{d:02}T00:00:00Z");
            assert_eq!(at(day * 86_400), want);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn lines_look_like_env_loggers_default() {
        let mut out = Vec::new();
        format(
            &mut out,
            &log::Record::builder()
                .level(log::Level::Info)
                .module_path(Some("httptunneling::tunnel"))
                .args(format_args!("tunnel {} open", 7))
                .build(),
        )
        .unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line.len(),
            "[2026-12-01T09:10:20Z INFO  httptunneling::tunnel] tunnel 7 open\n".len()
        );
        assert!(line.starts_with('['), "{line}");
        assert_eq!(
            &line[20..],
            "Z INFO  httptunneling::tunnel] tunnel 7 open\n",
            "{line}"
        );
        let mut out = Vec::new();
        format(
            &mut out,
            &log::Record::builder()
                .level(log::Level::Error)
                .args(format_args!("x"))
                .build(),
        )
        .unwrap();
        assert_eq!(&out[20..], b"Z ERROR] x\n");
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
