//! Apache Kafka over TLS and SASL, and outside producers: the listeners
//! `scripts/services.sh` starts (SSL, SASL_SSL with SCRAM-SHA-512, SSL with
//! client certificates), or the ones its environment variables name. Clusters
//! count exactly over them with a worker killed; each bad set-up fails fast
//! with a message naming the broker and the reason; secrets never show.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cluster::{inputs, kill_mid_stream_of, Cluster, KafkaAccess};
use crate::common::*;

/// A value `scripts/services.sh env` prints: from the environment when set
/// there, else from the script (which names what it started).
pub(crate) fn service(name: &str) -> String {
    static PRINTED: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    if let Ok(v) = std::env::var(name) {
        return v;
    }
    let printed = PRINTED.get_or_init(|| {
        let out = Command::new(root().join("scripts/services.sh")).arg("env").output().expect("run services.sh env");
        assert!(out.status.success(), "services.sh env failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    });
    printed.get(name).cloned().unwrap_or_else(|| panic!("{name} is not set and `scripts/services.sh env` names none"))
}

/// A librdkafka settings file in `dir` with `lines`.
fn settings(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write Kafka settings");
    path.display().to_string()
}

fn ca() -> String {
    format!("ssl.ca.location={}", service("HAILSTORM_TEST_KAFKA_CA"))
}

/// SASL_SSL with SCRAM-SHA-512 as `user` with `password`.
fn sasl(dir: &Path, user: &str, password: &str) -> KafkaAccess {
    let lines = [
        "security.protocol=SASL_SSL".into(),
        "sasl.mechanism=SCRAM-SHA-512".into(),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
        ca(),
    ];
    KafkaAccess {
        brokers: service("HAILSTORM_TEST_KAFKA_SASL"),
        settings: Some(settings(dir, "sasl.properties", &lines)),
    }
}

/// SSL with a client certificate, to the listener that requires one.
fn mtls(dir: &Path) -> KafkaAccess {
    let lines = [
        "security.protocol=SSL".into(),
        ca(),
        format!("ssl.certificate.location={}", service("HAILSTORM_TEST_KAFKA_CLIENT_CERT")),
        format!("ssl.key.location={}", service("HAILSTORM_TEST_KAFKA_CLIENT_KEY")),
    ];
    KafkaAccess {
        brokers: service("HAILSTORM_TEST_KAFKA_MTLS"),
        settings: Some(settings(dir, "mtls.properties", &lines)),
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn a_cluster_reading_over_sasl_ssl_counts_exactly_with_a_worker_killed() {
    let dir = scratch();
    let password = service("HAILSTORM_TEST_KAFKA_PASSWORD");
    let access = sasl(dir.path(), &service("HAILSTORM_TEST_KAFKA_USER"), &password);
    let mut c = Cluster::with_kafka("sasl", 3, access);
    kill_mid_stream_of(&mut c, 231, false);
    for n in 0..c.worker_count() {
        assert!(!c.log(n).contains(&password), "worker {n}'s log shows the SASL password");
    }
    let status = serde_json::to_string(&c.status()).unwrap_or_default();
    assert!(!status.contains(&password), "status shows the SASL password");
}

#[test]
fn a_cluster_reading_over_ssl_with_client_certificates_counts_exactly_with_a_worker_killed() {
    let dir = scratch();
    kill_mid_stream_of(&mut Cluster::with_kafka("mtls", 3, mtls(dir.path())), 232, false);
}

/// `produce` and `deploy` with `access`: both fail within 30 s, naming the
/// broker and a reason that contains one of `reasons`.
fn refused(case: &str, access: &KafkaAccess, reasons: &[&str]) {
    let sb = Sandbox::new();
    let input = sb.path("in.txt");
    std::fs::write(&input, "a few words\n").expect("write");
    let mut produce = Command::new(bin());
    produce.args(["produce", "--brokers", &access.brokers, "--topic", "refused"]).arg(&input).envs(access.env());
    let mut deploy = Command::new(bin());
    deploy.arg("deploy").arg(topology("topologies/wordcount-kafka.toml")).envs(access.env());
    deploy.args(["--set", &format!("cluster.kafka={:?}", access.brokers)]);
    deploy.args([
        "--set",
        &format!("cluster.zookeeper={:?}", format!("{}/hailstorm-refused", crate::cluster::zookeeper())),
    ]);
    for (what, cmd) in [("produce", produce), ("deploy", deploy)] {
        let t = Instant::now();
        let out = run_limited(cmd, Duration::from_secs(60));
        let (took, err) = (t.elapsed(), stderr(&out));
        assert!(!out.status.success(), "{case}: {what} succeeded:\n{err}");
        assert!(took < Duration::from_secs(30), "{case}: {what} took {took:?} to fail:\n{err}");
        assert!(err.contains(&access.brokers), "{case}: {what}'s error does not name the broker:\n{err}");
        assert!(
            reasons.iter().any(|r| err.contains(r)),
            "{case}: {what}'s error does not say why ({reasons:?}):\n{err}"
        );
        assert!(!err.contains(&service("HAILSTORM_TEST_KAFKA_PASSWORD")), "{case}: {what} shows the password:\n{err}");
        eprintln!("{case}: {what} failed in {:.1} s: {}", took.as_secs_f64(), err.trim());
    }
}

#[test]
fn a_wrong_ca_is_a_clear_error_within_seconds() {
    let dir = scratch();
    let other = dir.path().join("other-ca");
    let out = Command::new(bin()).args(["certs", "init"]).arg(&other).output().expect("certs init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = ["security.protocol=SSL".into(), format!("ssl.ca.location={}", other.join("ca.pem").display())];
    let access = KafkaAccess {
        brokers: service("HAILSTORM_TEST_KAFKA_TLS"),
        settings: Some(settings(dir.path(), "wrong-ca.properties", &lines)),
    };
    refused("a wrong CA", &access, &["certificate verify failed"]);
}

#[test]
fn a_wrong_password_is_a_clear_error_within_seconds() {
    let dir = scratch();
    let access = sasl(dir.path(), &service("HAILSTORM_TEST_KAFKA_USER"), "not-the-password");
    refused("a wrong password", &access, &["Authentication failed", "invalid credentials"]);
}

#[test]
fn plaintext_against_a_tls_port_is_a_clear_error_within_seconds() {
    let access = KafkaAccess { brokers: service("HAILSTORM_TEST_KAFKA_TLS"), settings: None };
    refused("plaintext against TLS", &access, &["security.protocol", "TLS"]);
}

#[test]
fn tls_against_the_plaintext_port_is_a_clear_error_within_seconds() {
    let dir = scratch();
    let lines = ["security.protocol=SSL".into(), ca()];
    let access = KafkaAccess {
        brokers: service("HAILSTORM_TEST_KAFKA"),
        settings: Some(settings(dir.path(), "tls.properties", &lines)),
    };
    refused("TLS against plaintext", &access, &["SSL handshake failed", "TLS"]);
}

#[test]
fn no_client_certificate_where_one_is_required_is_a_clear_error_within_seconds() {
    let dir = scratch();
    let lines = ["security.protocol=SSL".into(), ca()];
    let access = KafkaAccess {
        brokers: service("HAILSTORM_TEST_KAFKA_MTLS"),
        settings: Some(settings(dir.path(), "no-cert.properties", &lines)),
    };
    refused("no client certificate", &access, &["bad certificate", "certificate required"]);
}

/// Runs one of the broker's own tools (`scripts/services.sh kafka-java`).
fn kafka_tool(class: &str, args: &[&str], stdin: Option<&Path>) {
    let mut cmd = Command::new(root().join("scripts/services.sh"));
    cmd.arg("kafka-java").arg(class).args(args);
    if let Some(f) = stdin {
        cmd.stdin(std::fs::File::open(f).expect("open input"));
    }
    let out = run_limited(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{class} {args:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
}

/// A user of the SASL listener that this test alone uses, made and removed
/// through the broker's own ConfigCommand.
fn scram_user(name: &str, password: Option<&str>) {
    let brokers = service("HAILSTORM_TEST_KAFKA");
    let change = match password {
        Some(p) => vec!["--add-config".to_string(), format!("SCRAM-SHA-512=[iterations=4096,password={p}]")],
        None => vec!["--delete-config".to_string(), "SCRAM-SHA-512".to_string()],
    };
    let mut args = vec!["--bootstrap-server", &brokers, "--alter", "--entity-type", "users", "--entity-name", name];
    args.extend(change.iter().map(String::as_str));
    kafka_tool("org.apache.kafka.tools.ConfigCommand", &args, None);
}

#[test]
fn a_running_topology_whose_broker_refuses_its_credentials_is_reported_failed() {
    let dir = scratch();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let user = format!("revoked-{}-{stamp}", std::process::id());
    scram_user(&user, Some("a-password-to-revoke"));
    let mut c = Cluster::with_kafka("revoked", 0, sasl(dir.path(), &user, "a-password-to-revoke"));
    for n in 0..2 {
        let data = c.sb.path(&format!("worker-{n}"));
        c.start_worker_with(&data, &["--metrics-addr", "127.0.0.1:0"]);
    }
    let files = inputs(&c, 241, 20_000, 2);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    scram_user(&user, None);
    // Open connections authenticate again within 10 s (the broker's
    // connections.max.reauth.ms), and then every new one is refused.
    let started = Instant::now();
    loop {
        let s = c.status();
        let state = &s["topologies"][0]["status"];
        if state["state"] == "failed" {
            let message = state["message"].as_str().unwrap_or_default().to_string();
            assert!(message.contains(&c.kafka.brokers), "{message}");
            assert!(message.contains("Authentication") || message.contains("authentication"), "{message}");
            assert!(!message.contains("a-password-to-revoke"), "{message}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "still {state}:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nor do the logs or the web view show the password.
    for n in 0..2 {
        let log = c.log(n);
        assert!(!log.contains("a-password-to-revoke"), "worker {n}'s log shows the password");
        let addr = crate::observe::address_in(&log).unwrap_or_else(|| panic!("no metrics address:\n{log}"));
        for path in ["/", "/api/state", "/metrics"] {
            let page = crate::observe::get(&addr, path);
            assert!(!page.contains("a-password-to-revoke"), "worker {n}'s {path} shows the password");
        }
    }
}

/// The broker's own console producer writes the corpus once per codec;
/// the cluster counts all of it exactly.
#[test]
fn an_outside_producer_with_every_codec_is_counted_exactly() {
    let c = Cluster::new("codecs", 2);
    let files = inputs(&c, 251, 50_000, 5);
    // The topic exists with 4 partitions before the console producer writes.
    let empty = c.sb.path("empty.txt");
    std::fs::write(&empty, "").expect("write");
    c.produce(&[empty]);
    let brokers = service("HAILSTORM_TEST_KAFKA");
    for (file, codec) in files.iter().zip(["none", "gzip", "snappy", "lz4", "zstd"]) {
        let args = ["--bootstrap-server", &brokers, "--topic", &c.topic, "--compression-codec", codec];
        kafka_tool("org.apache.kafka.tools.ConsoleProducer", &args, Some(file));
    }
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
}
