//! Real TLS over loopback: a worker of the epoch gets through; a plaintext
//! peer, a stranger with another CA's certificate and a cluster member that
//! is not a worker of the epoch get nothing in; a dialer refuses a peer
//! whose certificate names another worker.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};

use super::*;
use crate::channel::ToSink;
use crate::core::clock::Clock;
use crate::net::{wire, Endpoint, Hello, Inboxes, Registry, Wiring, MAX_FRAME};

fn identities(dir: &Path, names: &[&str]) -> Vec<Arc<Tls>> {
    certs::init(dir).unwrap();
    names
        .iter()
        .map(|n| {
            certs::issue(dir, n).unwrap();
            Arc::new(Tls::load(dir, n).unwrap())
        })
        .collect()
}

fn names(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(w, n)| (w.to_string(), n.to_string())).collect()
}

/// Worker `w2` (TLS name `two`) serving sink 0 of topology `t` epoch 1,
/// whose workers are `w1` (`one`) and `w2`; returns its address and the sink's inbox.
fn serving(tls: Arc<Tls>) -> (String, Receiver<ToSink>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let registry = Registry::new();
    crate::net::serve(listener, registry.clone(), Some(tls.clone())).unwrap();
    let placement: BTreeMap<Endpoint, (String, String)> =
        [(Endpoint::Sink(0), ("w2".to_string(), addr.clone()))].into_iter().collect();
    let wiring = Wiring::new("t", 1, "w2", placement, registry).with_tls(tls, names(&[("w1", "one"), ("w2", "two")]));
    let (tx, rx) = bounded(16);
    let inboxes = Inboxes { sinks: [(0, tx)].into_iter().collect(), ..Inboxes::default() };
    wiring.register(inboxes, Shutdown::new());
    (addr, rx)
}

/// Sends one commit to sink 0 at `addr` as worker `w1`, speaking TLS with `tls`,
/// believing `w2` has TLS name `peer`.
fn send_as(tls: Arc<Tls>, addr: &str, peer: &str) -> anyhow::Result<()> {
    let placement: BTreeMap<Endpoint, (String, String)> =
        [(Endpoint::Sink(0), ("w2".to_string(), addr.to_string()))].into_iter().collect();
    let wiring =
        Wiring::new("t", 1, "w1", placement, Registry::new()).with_tls(tls, names(&[("w1", "one"), ("w2", peer)]));
    let (tx, rx) = bounded(1);
    tx.send(ToSink::Commit { round: 7, clock: Clock(vec![1]), last: false }).unwrap();
    drop(tx);
    wiring.forward(rx, Endpoint::Sink(0), |m| m, Shutdown::new())
}

fn nothing_arrives(rx: &Receiver<ToSink>) {
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err(), "a message got in");
}

#[test]
fn a_worker_of_the_epoch_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["one", "two"]);
    let (addr, rx) = serving(ids[1].clone());
    send_as(ids[0].clone(), &addr, "two").unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the commit arrives");
    assert!(matches!(got, ToSink::Commit { round: 7, .. }));
}

#[test]
fn a_plaintext_peer_gets_nothing_in() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["two"]);
    let (addr, rx) = serving(ids[0].clone());
    let mut s = TcpStream::connect(&addr).unwrap();
    let hello = Hello { topology: "t".into(), epoch: 1, to: Endpoint::Sink(0) };
    let commit = ToSink::Commit { round: 7, clock: Clock(vec![1]), last: false };
    let mut bytes = wire::encode(&hello, MAX_FRAME).unwrap();
    bytes.extend(wire::encode(&commit, MAX_FRAME).unwrap());
    let _ = s.write_all(&bytes);
    nothing_arrives(&rx);
}

#[test]
fn a_stranger_with_another_cas_certificate_gets_nothing_in() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = identities(ours.path(), &["two"]);
    let strangers = identities(theirs.path(), &["one", "two"]);
    let (addr, rx) = serving(ids[0].clone());
    let e = send_as(strangers[0].clone(), &addr, "two").unwrap_err();
    assert!(format!("{e:#}").contains("TLS handshake"), "{e:#}");
    nothing_arrives(&rx);
}

#[test]
fn a_member_of_the_cluster_that_is_not_a_worker_of_the_epoch_gets_nothing_in() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["two", "three"]);
    let (addr, rx) = serving(ids[0].clone());
    // `three` has a good certificate, but the epoch's workers are `one` and `two`.
    let _ = send_as(ids[1].clone(), &addr, "two");
    nothing_arrives(&rx);
}

#[test]
fn a_dialer_refuses_a_peer_whose_certificate_names_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["one", "two"]);
    let (addr, rx) = serving(ids[1].clone());
    // The placement says w2 is `zwei`; the one answering is `two`.
    let e = send_as(ids[0].clone(), &addr, "zwei").unwrap_err();
    assert!(format!("{e:#}").contains("TLS handshake"), "{e:#}");
    nothing_arrives(&rx);
}

#[test]
fn names_and_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path()).unwrap();
    for bad in ["", "ca", "Upper", "a/b", "-x", "x-", "1", "0x1f", "dot.ted"] {
        assert!(certs::issue(dir.path(), bad).is_err(), "{bad:?} was accepted");
    }
    let e = certs::init(dir.path()).unwrap_err();
    assert!(format!("{e:#}").contains("must not exist yet"), "{e:#}");
    let e = Tls::load(dir.path(), "missing").unwrap_err();
    assert!(format!("{e:#}").contains("certs issue"), "{e:#}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_peer_trickling_its_handshake_is_dropped_at_the_hello_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &["two"]);
    let (addr, _rx) = serving(ids[0].clone());
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    // A TLS record header announcing a long handshake message, then a byte at a time.
    s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).unwrap();
    let started = std::time::Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(12) {
            break false;
        }
        if s.write_all(&[0x01]).is_err() {
            break true;
        }
        let mut b = [0u8; 64];
        if std::io::Read::read(&mut s, &mut b).is_ok() {
            break true; // an alert or the end of the stream
        }
        std::thread::sleep(Duration::from_millis(30));
    };
    assert!(closed, "a trickling peer held its connection for 12 s");
    assert!(started.elapsed() < Duration::from_secs(9), "dropped only after {:?}", started.elapsed());
}
