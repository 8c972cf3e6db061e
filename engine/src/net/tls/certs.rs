//! `hailstorm certs`: a cluster CA and worker certificates signed by it
//! (rcgen). Keys are written readable by their owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// How long certificates are valid, in years.
const VALID_YEARS: i32 = 10;

/// Refuses a name that cannot be a certificate's DNS name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= 63
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || name == "ca" {
        bail!(
            "`{name}` cannot name a worker certificate: start with a lowercase letter, then up to 62 lowercase letters, digits and inner `-`; not `ca`"
        );
    }
    Ok(())
}

/// From the start of last year to [`VALID_YEARS`] from now.
fn validity(p: &mut CertificateParams) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + VALID_YEARS, 1, 1);
}

/// Writes `path` as a new file (never over an existing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `hailstorm certs init DIR`: a new cluster CA in `DIR/ca.pem` and `DIR/ca.key`.
pub fn init(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "Hailstorm cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p);
    let cert = p.self_signed(&key)?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.pem"), &cert.pem(), 0o644)
}

/// `hailstorm certs issue DIR NAME`: `DIR/NAME.pem` and `DIR/NAME.key`, a
/// certificate for name `NAME` (as server and as client) signed by the CA in `DIR`.
pub fn issue(dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {} (make it with `hailstorm certs init`)", p.display()))
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).context("ca.key holds no valid key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("ca.pem holds no valid CA certificate")?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![name.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p);
    let cert = p.signed_by(&key, &issuer)?;
    write_new(&dir.join(format!("{name}.key")), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join(format!("{name}.pem")), &cert.pem(), 0o644)
}
