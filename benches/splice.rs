//! The splice experiment of issue 15: moving a plain TCP stream through a
//! pipe pair with `splice(2)` against copying it through a user-space
//! buffer as the rings do, side by side in one run.
//!
//! ```text
//! cargo bench --bench splice [-- --gib N --reps N --buffer BYTES]
//! ```
//!
//! A source thread writes `--gib` GiB into a loopback connection; the
//! forwarding thread moves it to a second loopback connection, whose sink
//! thread reads and discards it. The forwarding thread is measured: wall
//! time, and its own CPU time (`CLOCK_THREAD_CPUTIME_ID`), which is where
//! the engine's per-byte cost would be. The two ways, interleaved:
//!
//! - `copy`: `read(2)` into a buffer of `--buffer` bytes (the engine's
//!   default ring, 256 KiB), `write(2)` it all out;
//! - `splice`: `splice(2)` from the socket into a pipe whose capacity is
//!   raised to `--buffer` (`F_SETPIPE_SZ`), `splice(2)` from the pipe to
//!   the other socket.
//!
//! Blocking sockets on one thread each: the mechanism is compared, not the
//! event loop around it (which costs the same readiness work in both).
//! Under `cargo test --benches` it moves 64 MiB once as a smoke test.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("splice(2) is Linux-only: nothing to measure here");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{self, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, RawFd};
    use std::thread;
    use std::time::{Duration, Instant};

    const CHUNK: usize = 128 * 1024;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Way {
        Copy,
        Splice,
    }

    struct Sample {
        wall: Duration,
        cpu: Duration,
        bytes: u64,
    }

    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a pointer to a timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn copy(from: &mut TcpStream, to: &mut TcpStream, buffer: usize) -> io::Result<u64> {
        let mut buf = vec![0u8; buffer];
        let mut total = 0;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            to.write_all(&buf[..n])?;
            total += n as u64;
        }
    }

    fn splice_once(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: plain descriptors we own; null offsets (sockets, pipes).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn splice(from: &TcpStream, to: &TcpStream, buffer: usize) -> io::Result<u64> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (r, w) = (fds[0], fds[1]);
        // SAFETY: a pipe descriptor we own; F_SETPIPE_SZ takes a size.
        unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, buffer as libc::c_int) };
        let mut total = 0;
        let result = loop {
            let n = match splice_once(from.as_raw_fd(), w, buffer) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let mut left = n;
            while left > 0 {
                match splice_once(r, to.as_raw_fd(), left) {
                    Ok(m) => left -= m,
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
        };
        // SAFETY: closing the pipe we made.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        result
    }

    fn run(way: Way, bytes: u64, buffer: usize) -> Sample {
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let source = thread::spawn(move || {
            let mut s = TcpStream::connect(front_addr).unwrap();
            let chunk = vec![0x5Au8; CHUNK];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(CHUNK as u64) as usize;
                s.write_all(&chunk[..n]).unwrap();
                sent += n as u64;
            }
        });
        let sink = thread::spawn(move || {
            let (mut s, _) = back.accept().unwrap();
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got += n as u64,
                }
            }
        });
        let (mut client, _) = front.accept().unwrap();
        let mut upstream = TcpStream::connect(back_addr).unwrap();
        let (t0, c0) = (Instant::now(), thread_cpu());
        let moved = match way {
            Way::Copy => copy(&mut client, &mut upstream, buffer),
            Way::Splice => splice(&client, &upstream, buffer),
        }
        .expect("forwarding");
        upstream.shutdown(std::net::Shutdown::Write).unwrap();
        let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
        source.join().unwrap();
        let got = sink.join().unwrap();
        assert_eq!(moved, bytes, "{way:?}: moved");
        assert_eq!(got, bytes, "{way:?}: the sink got every byte");
        Sample { wall, cpu, bytes }
    }

    fn arg(args: &[String], name: &str, default: u64) -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let bench = args.iter().any(|a| a == "--bench");
        let (gib, reps) = if bench {
            (arg(&args, "--gib", 4), arg(&args, "--reps", 3))
        } else {
            (0, 1)
        };
        let bytes = if bench { gib << 30 } else { 64 << 20 };
        let buffer = arg(&args, "--buffer", 256 << 10) as usize;
        let mut results: Vec<(Way, Sample)> = Vec::new();
        for _ in 0..reps {
            for way in [Way::Copy, Way::Splice] {
                results.push((way, run(way, bytes, buffer)));
            }
        }
        println!(
            "splice experiment: {} MiB per run, buffer/pipe {} KiB, {reps} interleaved reps (medians)",
            bytes >> 20,
            buffer >> 10
        );
        println!("| way | Gbit/s | forwarder CPU s/GiB |");
        println!("|---|---|---|");
        for way in [Way::Copy, Way::Splice] {
            let mut gbit: Vec<f64> = Vec::new();
            let mut cpu: Vec<f64> = Vec::new();
            for (_, s) in results.iter().filter(|(w, _)| *w == way) {
                gbit.push(s.bytes as f64 * 8.0 / s.wall.as_secs_f64() / 1e9);
                cpu.push(s.cpu.as_secs_f64() / (s.bytes as f64 / f64::from(1u32 << 30)));
            }
            gbit.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            println!(
                "| {way:?} | {:.2} | {:.3} |",
                gbit[gbit.len() / 2],
                cpu[cpu.len() / 2]
            );
        }
    }
}
