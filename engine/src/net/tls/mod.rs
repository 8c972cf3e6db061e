//! Mutual TLS between workers (rustls). Every worker of a cluster holds a
//! certificate from the cluster's CA (made with `hailstorm certs`) whose
//! name is the worker's TLS name. A connection is accepted only from a
//! peer whose certificate the CA signed, and a dialer checks that the peer
//! is the worker the placement names; the receiver then checks that the
//! dialer is one of the epoch's workers.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::slow;
use crate::channel::Shutdown;

pub mod certs;

/// How long a handshake may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// A worker's TLS identity and the cluster's CA.
pub struct Tls {
    name: String,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.name)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl Tls {
    /// Loads `DIR/ca.pem` and the identity `DIR/NAME.pem` + `DIR/NAME.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Tls> {
        certs::check_name(name)?;
        let file = |f: String| dir.join(f);
        let ca_path = file("ca.pem".into());
        let mut roots = RootCertStore::empty();
        for c in
            CertificateDer::pem_file_iter(&ca_path).with_context(|| format!("cannot read {}", ca_path.display()))?
        {
            let c = c.with_context(|| format!("{} holds no valid certificate", ca_path.display()))?;
            roots.add(c).with_context(|| format!("{} holds no valid CA certificate", ca_path.display()))?;
        }
        let cert_path = file(format!("{name}.pem"));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read {}; make it with `hailstorm certs issue`", cert_path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} holds no valid certificate", cert_path.display()))?;
        let key_path = file(format!("{name}.key"));
        let key =
            PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| anyhow!("cannot use the CA in {}: {e}", ca_path.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .with_context(|| format!("{} does not go with {}", key_path.display(), cert_path.display()))?;
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("{} does not go with {}", key_path.display(), cert_path.display()))?;
        Ok(Tls { name: name.to_string(), server: Arc::new(server), client: Arc::new(client) })
    }

    /// This worker's TLS name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens TLS over `sock` to the worker named `peer`: its certificate
    /// must be the CA's and carry that name.
    pub(crate) fn dial(&self, mut sock: TcpStream, peer: &str, shutdown: &Shutdown) -> Result<Link> {
        let name = ServerName::try_from(peer.to_string()).map_err(|_| anyhow!("bad TLS name {peer:?}"))?;
        let mut conn = ClientConnection::new(self.client.clone(), name)?;
        conn.set_buffer_limit(None);
        sock.set_read_timeout(Some(crate::channel::HEARTBEAT))?;
        handshake(&mut conn, &mut sock, Instant::now() + HANDSHAKE_WAIT, Some(shutdown))
            .with_context(|| format!("TLS handshake with {peer}"))?;
        Ok(Link::Tls(Box::new((conn, sock))))
    }

    /// Makes an accepted connection TLS: the handshake must end by
    /// `deadline` (the socket must have a read timeout).
    pub(crate) fn accept(&self, mut sock: TcpStream, deadline: Instant) -> Result<Incoming> {
        let mut conn = ServerConnection::new(self.server.clone())?;
        handshake(&mut conn, &mut sock, deadline, None).context("TLS handshake")?;
        Ok(Incoming::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }
}

/// Runs a TLS handshake to its end, a record at a time, so that a peer that
/// trickles bytes cannot hold it past `deadline` (or past an abort).
fn handshake<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    deadline: Instant,
    shutdown: Option<&Shutdown>,
) -> Result<()> {
    loop {
        if Instant::now() > deadline {
            bail!("not done within {}s", HANDSHAKE_WAIT.as_secs());
        }
        if shutdown.is_some_and(Shutdown::is_aborted) {
            bail!("aborted");
        }
        if conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => continue,
                Err(e) if slow(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        match conn.read_tls(sock) {
            Ok(0) => bail!("the peer closed the connection"),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    let _ = conn.write_tls(sock); // the alert saying why
                    return Err(e.into());
                }
            }
            Err(e) if slow(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The sending end of a connection to another worker.
pub(crate) enum Link {
    Plain(TcpStream),
    Tls(Box<(ClientConnection, TcpStream)>),
}

impl Link {
    /// Writes all of `bytes`, checking for an abort whenever the peer is slow.
    pub(crate) fn send(&mut self, bytes: &[u8], shutdown: &Shutdown) -> std::io::Result<()> {
        match self {
            Link::Plain(sock) => write_all(sock, bytes, shutdown),
            Link::Tls(b) => {
                let (conn, sock) = &mut **b;
                // Buffered whole (no limit), then flushed: a timeout never
                // loses or repeats a byte.
                conn.writer().write_all(bytes)?;
                while conn.wants_write() {
                    match conn.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if slow(&e) => {
                            if shutdown.is_aborted() {
                                return Err(ErrorKind::ConnectionAborted.into());
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

impl Link {
    /// Whether the peer closed the connection (its process died, say): a
    /// peer that only receives sends nothing, so a readable end of stream
    /// (or an error) means it is gone. Never blocks.
    pub(crate) fn peer_closed(&mut self) -> bool {
        let sock = match self {
            Link::Plain(s) => &*s,
            Link::Tls(b) => &b.1,
        };
        if sock.set_nonblocking(true).is_err() {
            return false;
        }
        let closed = match self {
            Link::Plain(s) => {
                let mut one = [0u8; 1];
                match s.peek(&mut one) {
                    Ok(n) => n == 0,
                    Err(e) => !slow(&e),
                }
            }
            Link::Tls(b) => tls_closed(b),
        };
        let sock = match self {
            Link::Plain(s) => &*s,
            Link::Tls(b) => &b.1,
        };
        // A socket that cannot be made blocking again is of no more use either.
        let restored = sock.set_nonblocking(false).is_ok();
        closed || !restored
    }
}

/// Reads (and drops) whatever TLS records the peer sent (session tickets,
/// alerts) until none is waiting: true at the end of the stream or on an error.
fn tls_closed(b: &mut (ClientConnection, TcpStream)) -> bool {
    let (conn, sock) = b;
    loop {
        match conn.read_tls(sock) {
            Ok(0) => return true,
            Ok(_) => {
                if conn.process_new_packets().is_err() {
                    return true;
                }
                let mut sink = [0u8; 4096];
                while matches!(conn.reader().read(&mut sink), Ok(n) if n > 0) {}
            }
            Err(e) => return !slow(&e),
        }
    }
}

/// Writes all of `bytes` to a plain socket, checking for an abort whenever the peer is slow.
fn write_all(stream: &mut TcpStream, mut bytes: &[u8], shutdown: &Shutdown) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if slow(&e) => {
                if shutdown.is_aborted() {
                    return Err(ErrorKind::ConnectionAborted.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The receiving end of a connection from another worker.
pub(crate) enum Incoming {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Incoming {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Incoming::Plain(s) => s,
            Incoming::Tls(s) => &s.sock,
        }
    }

    /// Whether the peer proved (with a certificate of the cluster's CA) to
    /// be one of `names`; true on a plain connection (no TLS configured).
    pub(crate) fn peer_is_one_of<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        let Incoming::Tls(s) = self else { return true };
        let Some(cert) = s.conn.peer_certificates().and_then(|c| c.first()) else { return false };
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else { return false };
        names.any(|n| {
            ServerName::try_from(n.to_string()).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        })
    }
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Incoming::Plain(s) => s.read(buf),
            Incoming::Tls(s) => s.read(buf),
        }
    }
}

#[cfg(test)]
mod tests;
