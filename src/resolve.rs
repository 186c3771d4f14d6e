//! Name resolution off the reactor thread.
//!
//! Owns a small pool of worker threads that run [`Resolve::resolve`] and hand
//! each answer back to the reactor through a channel plus its `mio::Waker`.
//! A slow or hung lookup occupies one worker, never the reactor: established
//! tunnels keep moving while it waits. Workers are started on demand, up to
//! [`MAX_WORKERS`], so one hung lookup does not hold up the next.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

/// Most resolver threads alive at once.
pub const MAX_WORKERS: usize = 16;

/// Turns a host name and port into socket addresses. Implementations may
/// block: they only ever run on resolver threads.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `host` (never an IP literal: those skip resolution).
    ///
    /// # Errors
    /// Whatever the lookup reports; an empty list is also treated as failure.
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` through `ToSocketAddrs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// One lookup asked for by the reactor; `tag` comes back with the answer.
pub struct Job<T> {
    pub tag: T,
    pub host: String,
    pub port: u16,
}

/// The pool. Answers are delivered through `deliver`, which the reactor
/// supplies (it sends on its channel and wakes the poll).
pub struct Resolver<T: Send + 'static> {
    jobs: Option<Sender<Job<T>>>,
    queue: Arc<Mutex<Receiver<Job<T>>>>,
    /// Workers waiting for a job.
    idle: Arc<AtomicUsize>,
    /// Jobs sent but not yet taken by a worker.
    queued: Arc<AtomicUsize>,
    workers: usize,
    resolver: Arc<dyn Resolve>,
    deliver: Arc<dyn Fn(T, io::Result<Vec<SocketAddr>>) + Send + Sync>,
}

impl<T: Send + 'static> Resolver<T> {
    /// Creates the pool; no thread starts until the first lookup.
    pub fn new(
        resolver: Arc<dyn Resolve>,
        deliver: Arc<dyn Fn(T, io::Result<Vec<SocketAddr>>) + Send + Sync>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel();
        Resolver {
            jobs: Some(jobs),
            queue: Arc::new(Mutex::new(queue)),
            idle: Arc::new(AtomicUsize::new(0)),
            queued: Arc::new(AtomicUsize::new(0)),
            workers: 0,
            resolver,
            deliver,
        }
    }

    /// Queues a lookup. The answer arrives later through `deliver`.
    pub fn submit(&mut self, job: Job<T>) {
        // Every queued job needs an idle worker of its own, or a lookup
        // that hangs would hold up the one queued behind it.
        let queued = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if self.idle.load(Ordering::Acquire) < queued && self.workers < MAX_WORKERS {
            self.spawn_worker();
        }
        if let Some(jobs) = &self.jobs {
            // Send fails only when every worker is gone, which happens only
            // after `Drop` took `jobs`; nothing to do then.
            let _ = jobs.send(job);
        }
    }

    fn spawn_worker(&mut self) {
        let queue = Arc::clone(&self.queue);
        let idle = Arc::clone(&self.idle);
        let queued = Arc::clone(&self.queued);
        let resolver = Arc::clone(&self.resolver);
        let deliver = Arc::clone(&self.deliver);
        let spawned = thread::Builder::new()
            .name("resolver".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                idle.fetch_sub(1, Ordering::AcqRel);
                let Ok(job) = job else { return };
                queued.fetch_sub(1, Ordering::AcqRel);
                let answer = match resolver.resolve(&job.host, job.port) {
                    Ok(addrs) if addrs.is_empty() => {
                        Err(io::Error::new(io::ErrorKind::NotFound, "no address found"))
                    }
                    other => other,
                };
                deliver(job.tag, answer);
            });
        if spawned.is_ok() {
            self.workers += 1;
        }
    }
}

impl<T: Send + 'static> Drop for Resolver<T> {
    fn drop(&mut self) {
        // Closing the job channel ends idle workers; busy ones end after
        // their lookup. They are not joined: a hung lookup must not hang exit.
        self.jobs.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Slow;
    impl Resolve for Slow {
        fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            if host == "slow" {
                thread::sleep(Duration::from_millis(500));
            }
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        }
    }

    #[test]
    fn a_hung_lookup_does_not_hold_up_the_next() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let deliver = Arc::new(move |tag: &'static str, r: io::Result<Vec<SocketAddr>>| {
            tx.lock().unwrap().send((tag, r.unwrap())).unwrap();
        });
        let mut pool = Resolver::new(Arc::new(Slow), deliver);
        pool.submit(Job {
            tag: "slow",
            host: "slow".into(),
            port: 1,
        });
        pool.submit(Job {
            tag: "fast",
            host: "fast".into(),
            port: 2,
        });
        let (first, addrs) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, "fast");
        assert_eq!(addrs[0].port(), 2);
        let (second, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(second, "slow");
    }
}
