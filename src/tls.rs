//! TLS to `https://` proxies: the rustls client settings (built where files
//! may be read, never on the reactor thread) and the TLS session a
//! [`crate::transport::Transport`] drives over a non-blocking socket.
//!
//! Owns: the trust roots (the system store through `rustls-native-certs`,
//! or a `proxy-ca` PEM file), the `proxy-verify=off` verifier, and
//! [`TlsStream`]: plaintext in and out, records to and from the socket, the
//! handshake driven by the same reads and writes. Never does: blocking
//! calls, logging, choosing when to read or write (the tunnel does, from
//! readiness).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::transport::Transport;

/// Most plaintext a session buffers before a write says `WouldBlock`: the
/// same order as a socket's send buffer, so TLS keeps the rings'
/// backpressure rule (memory per tunnel stays bounded).
const PLAINTEXT_LIMIT: usize = 64 * 1024;

/// Where the trust for `https://` hops comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// The system's CA store.
    System,
    /// The CA certificates of this PEM file (`proxy-ca`).
    File(std::path::PathBuf),
    /// Any certificate and name (`proxy-verify=off`).
    Off,
}

/// The client settings for one kind of trust.
///
/// # Errors
/// The system store cannot be read or is empty, or the PEM file holds no
/// usable certificate; the text says which.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let config = match trust {
        Trust::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth(),
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no certificate found".into());
                return Err(format!("the system's CA store is unusable: {why}"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::File(path) => builder
            .with_root_certificates(roots_from_pem(path)?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file.
fn roots_from_pem(path: &Path) -> Result<RootCertStore, String> {
    let name = path.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("proxy-ca {name}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("proxy-ca {name}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("proxy-ca {name}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("proxy-ca {name}: no certificate in it"));
    }
    Ok(roots)
}

/// `proxy-verify=off`: accepts any certificate for any name, but still
/// checks the handshake's signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client settings of every kind of trust a configuration uses, built
/// together where files may be read (at start, on the reload thread).
#[derive(Debug, Clone, Default)]
pub struct Store(HashMap<Trust, Arc<ClientConfig>>);

impl Store {
    /// Builds the settings for each of `trusts`.
    ///
    /// # Errors
    /// The first that cannot be built, saying why.
    pub fn build(trusts: impl IntoIterator<Item = Trust>) -> Result<Store, String> {
        let mut store = HashMap::new();
        for trust in trusts {
            if let std::collections::hash_map::Entry::Vacant(slot) = store.entry(trust) {
                let config = client_config(slot.key())?;
                slot.insert(config);
            }
        }
        Ok(Store(store))
    }

    /// The settings for `trust`, if they were built.
    pub fn get(&self, trust: &Trust) -> Option<Arc<ClientConfig>> {
        self.0.get(trust).cloned()
    }
}

/// A TLS session over a non-blocking connection: the socket, or the tunnel
/// through an earlier hop (itself maybe TLS).
#[derive(Debug)]
pub struct TlsStream {
    inner: Transport,
    conn: ClientConnection,
    /// Plaintext rustls holds, ready to be read without the socket.
    plaintext: usize,
    /// The write half is to be shut once the close_notify is out.
    shutdown_pending: bool,
}

impl TlsStream {
    /// Starts a session with `host` (the name as written in the URL: SNI
    /// and the certificate check use it) over a connection.
    ///
    /// # Errors
    /// `host` is not a valid server name.
    pub fn new(inner: Transport, config: Arc<ClientConfig>, host: &str) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("TLS name {host}: {e}"))
        })?;
        let mut conn = ClientConnection::new(config, name).map_err(tls_error)?;
        conn.set_buffer_limit(Some(PLAINTEXT_LIMIT));
        Ok(TlsStream {
            inner,
            conn,
            plaintext: 0,
            shutdown_pending: false,
        })
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.inner.tcp()
    }

    /// The socket underneath, mutably.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        self.inner.tcp_mut()
    }

    /// Whether decrypted bytes wait to be read.
    pub fn read_buffered(&self) -> bool {
        self.plaintext > 0 || self.inner.read_buffered()
    }

    /// Whether records (handshake, data, close_notify) wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write() || self.shutdown_pending || self.inner.wants().write
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Writes pending records until none is left or the socket is full
    /// (`WouldBlock`); then a pending write shutdown.
    pub fn flush_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.inner) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // An inner TLS session (a chain) has records of its own to send.
        self.inner.flush()?;
        if self.shutdown_pending {
            self.shutdown_pending = false;
            self.inner.shutdown_write()?;
        }
        Ok(())
    }

    /// Sends close_notify and shuts the write half once it is out.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.shutdown_pending = true;
        match self.flush_records() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Reads what the socket has into the session and processes it.
    /// `Ok(false)` at the socket's end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.conn.read_tls(&mut self.inner) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let state = self.conn.process_new_packets().map_err(|e| {
            // Tell the proxy why, as far as the socket takes it.
            let _ = self.conn.write_tls(&mut self.inner);
            tls_error(e)
        })?;
        self.plaintext = state.plaintext_bytes_to_read();
        // A handshake message or key update may want an answer at once.
        match self.flush_records() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => other?,
        }
        Ok(n > 0)
    }
}

impl Read for TlsStream {
    /// Fills `buf` with plaintext as far as the socket allows: fewer bytes
    /// than offered means the socket has nothing more now, as for TCP.
    /// The end of stream is `Ok(0)` after close_notify, and also after a
    /// bare TCP close (proxies often skip close_notify; a tunnel's data has
    /// its own framing, if any).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) if filled == 0 && !buf.is_empty() => return Ok(0),
                Ok(n) => {
                    filled += n;
                    self.plaintext = self.plaintext.saturating_sub(n);
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    if n == 0 {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(filled),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    /// Takes plaintext once the records before it are out, and goes on
    /// taking it while the socket takes the records: like a TCP write, it
    /// is short only when the socket is full (the tunnel then waits for a
    /// writable edge, which comes because records wait), and with records
    /// waiting for a full socket it says `WouldBlock`, so the ring keeps
    /// the bytes and backpressure works as for TCP.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        let mut total = 0;
        while total < buf.len() {
            let n = self.conn.writer().write(&buf[total..])?;
            if n == 0 {
                break;
            }
            total += n;
            match self.flush_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if total > 0 => {
                    // The bytes taken are in records; the error comes back
                    // at the next call.
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if total == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match self.write(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(e) if total > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if total > 0 => {
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

/// A rustls error as an `io::Error` whose text says what failed (an
/// expired certificate, an unknown issuer, a name mismatch).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection, StreamOwned};
    use std::net::{SocketAddr, TcpListener};
    use std::time::{Duration, Instant};

    /// A CA and a certificate it signed for `names`, valid or expired.
    struct Pki {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    fn pki(names: &[&str], expired: bool) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("httptunneling test CA {n}"),
        );
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A blocking TLS echo server on loopback, one connection.
    fn echo_server(pki: &Pki) -> SocketAddr {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(pki.chain.clone(), pki.key.clone_key())
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            let mut buf = vec![0u8; 65536];
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tls.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        addr
    }

    fn ca_file(pki: &Pki) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "httptunneling-ca-{}-{:?}.pem",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &pki.ca_pem).unwrap();
        path
    }

    /// Sends `len` bytes through a TlsStream over a non-blocking socket
    /// driven by a real poll, reading the echo back; returns the bytes
    /// echoed or the first error.
    fn exchange(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let mut poll = Poll::new()?;
        let mut tcp = TcpStream::connect(addr)?;
        poll.registry()
            .register(&mut tcp, Token(0), Interest::READABLE | Interest::WRITABLE)?;
        let mut tls = Transport::Tls(Box::new(TlsStream::new(Transport::Tcp(tcp), config, name)?));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        let mut events = Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 32 * 1024];
        while got.len() < len {
            assert!(
                Instant::now() < deadline,
                "timed out: sent {sent}, got {}",
                got.len()
            );
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if tls.wants().write {
                match tls.flush() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other => other?,
                }
            }
            while sent < len {
                match tls.write(&data[sent..(sent + 20_000).min(len)]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            loop {
                match tls.read(&mut buf) {
                    Ok(0) => return Ok(got),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        assert_eq!(got, data, "echo through TLS is byte-exact");
        Ok(got)
    }

    #[test]
    fn four_mib_each_way_through_tls_with_a_file_ca_is_byte_exact() {
        let pki = pki(&["proxy.test"], false);
        let addr = echo_server(&pki);
        let path = ca_file(&pki);
        let config = client_config(&Trust::File(path.clone())).unwrap();
        let got = exchange(addr, config, "proxy.test", 4 << 20).unwrap();
        assert_eq!(got.len(), 4 << 20);
        let _ = std::fs::remove_file(path);
    }

    fn failure(pki: &Pki, trust: Trust, name: &str) -> String {
        let addr = echo_server(pki);
        let config = client_config(&trust).unwrap();
        match exchange(addr, config, name, 1024) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn certificate_failures_say_what_is_wrong() {
        let good = pki(&["proxy.test"], false);
        let path = ca_file(&good);
        let wrong_name = failure(&good, Trust::File(path.clone()), "other.test");
        assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
        let expired = pki(&["proxy.test"], true);
        let path_expired = ca_file(&expired);
        let e = failure(&expired, Trust::File(path_expired.clone()), "proxy.test");
        assert!(e.to_lowercase().contains("expired"), "{e}");
        let stranger = pki(&["proxy.test"], false);
        let e = failure(&stranger, Trust::File(path.clone()), "proxy.test");
        assert!(e.to_lowercase().contains("issuer"), "{e}");
        // proxy-verify=off: any certificate, any name.
        assert_eq!(failure(&expired, Trust::Off, "other.test"), "");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path_expired);
    }

    #[test]
    fn a_pem_file_without_certificates_is_a_clear_error() {
        let path =
            std::env::temp_dir().join(format!("httptunneling-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = client_config(&Trust::File(path.clone())).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
