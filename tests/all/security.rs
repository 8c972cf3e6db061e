//! Who may do what: a cluster secured with ZooKeeper credentials lets no
//! one without them read or change it, sinks are granted only what the
//! operator allows, `validate` runs no command, and modules can neither
//! flood the host's output nor sleep past their deadline.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{inputs, Cluster};
use crate::common::*;

const AUTH: &str = "hailstorm:s3cret-for-tests";

/// `hailstorm ARGS` with environment `env`: exit code and stderr.
fn hailstorm_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).envs(env.iter().copied());
    let out = run_limited(cmd, Duration::from_secs(120));
    (out.status.code(), stderr(&out))
}

#[test]
fn a_secured_cluster_counts_exactly_and_refuses_whoever_lacks_its_credentials() {
    let c = Cluster::with_auth("zk-auth", 2, Some(AUTH));
    let files = inputs(&c, 801, 20_000, 2);
    c.produce(&files);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    // Without the credentials, or with others, the root can be neither read nor changed.
    for env in [vec![], vec![("HAILSTORM_ZK_AUTH", "hailstorm:wrong")]] {
        let (code, err) = hailstorm_env(&["status", "--zookeeper", &c.zk], &env);
        assert_ne!(code, Some(0), "status without the credentials succeeded:\n{err}");
        assert!(err.contains("HAILSTORM_ZK_AUTH") && err.contains("not authorized"), "{err}");
        let (code, err) = hailstorm_env(&["stop", "wordcount-kafka", "--zookeeper", &c.zk], &env);
        assert_ne!(code, Some(0), "stop without the credentials succeeded:\n{err}");
        assert!(err.contains("HAILSTORM_ZK_AUTH"), "{err}");
    }
    let mut sets = c.sets();
    sets.push("snapshot.interval=\"300ms\"".into());
    let out = deploy_env("topologies/wordcount-kafka.toml", &sets, &[], Duration::from_secs(120));
    assert!(!out.status.success(), "a deploy without the credentials succeeded");
    assert!(stderr(&out).contains("HAILSTORM_ZK_AUTH"), "{}", stderr(&out));
    // The cluster runs on, untouched.
    let more = inputs(&c, 802, 5_000, 1);
    c.produce(&more);
    let all: Vec<_> = files.iter().chain(&more).cloned().collect();
    c.wait_for_table(&count_words(&all), Duration::from_secs(120));
}

#[test]
fn a_worker_with_credentials_refuses_a_root_open_to_anyone() {
    // A root made by a worker without credentials: anyone may change it.
    let c = Cluster::new("open-root", 1);
    let (code, err) = hailstorm_env(&["worker", "--zookeeper", &c.zk], &[("HAILSTORM_ZK_AUTH", AUTH)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("open to anyone") && err.contains("choose a new root"), "{err}");
    let (code, err) = hailstorm_env(&["status", "--zookeeper", &c.zk], &[("HAILSTORM_ZK_AUTH", "no-colon")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("HAILSTORM_ZK_AUTH must be USER:PASSWORD"), "{err}");
}

#[test]
fn grants_outside_the_roots_a_worker_allows_are_refused_at_deploy_and_by_the_worker() {
    let mut c = Cluster::new("grants", 1);
    c.produce(&inputs(&c, 803, 2_000, 1));
    let elsewhere = c.sb.path("elsewhere");
    let outside = [
        format!("sinks.table.config.path={:?}", elsewhere.join("t.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", elsewhere.display().to_string()),
    ];
    let out = c.deploy(&outside);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in ["sink `table` is granted", &elsewhere.display().to_string(), "--allow-grants"] {
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    assert!(!elsewhere.exists(), "the refused sink wrote {}", elsewhere.display());
    // A topology the first worker allows, then a worker that allows only
    // another root takes over: it refuses to run the sink.
    assert_ok(&c.deploy(&[]));
    c.wait_for_a_complete_round();
    let other = c.sb.path("other").display().to_string();
    let dir = c.sb.path("worker-strict");
    c.start_worker_with(&dir, &["--allow-grants", &other]);
    c.kill(0);
    c.wait_until("the strict worker's refusal", Duration::from_secs(120), || {
        c.status().to_string().contains("allows only directories under")
    });
}

#[test]
fn validate_runs_no_build_command_unless_asked() {
    let sb = Sandbox::new();
    let marker = sb.path("built");
    let file = sb.path("t.toml");
    let text = format!(
        "name = \"t\"\n[spouts.lines]\nsource = {{ files = [\"in.txt\"] }}\ndeserializer = \"missing.wasm\"\n\
         build = {{ command = \"touch {}\" }}\n[bolts.counts]\ninputs = [\"lines\"]\nmodule = \"missing.wasm\"\n",
        marker.display()
    );
    std::fs::write(&file, text).expect("write");
    std::fs::write(sb.path("in.txt"), "a b\n").expect("write");
    let (code, err) = hailstorm_env(&["validate", &file.display().to_string()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!marker.exists(), "validate ran the build command");
    assert!(err.contains("--build"), "no hint to build:\n{err}");
    let (_, err) = hailstorm_env(&["validate", "--build", &file.display().to_string()], &[]);
    assert!(marker.exists(), "validate --build did not run the build command:\n{err}");
}

#[test]
fn a_sink_cannot_sleep_past_its_deadline() {
    let sb = Sandbox::new();
    let started = Instant::now();
    let sets = [format!("snapshot.store={:?}", format!("file:{}", sb.path("store").display()))];
    let out = deploy("tests/fixtures/sleepy-sink.toml", &sets, Duration::from_secs(120));
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(!out.status.success(), "the sleepy sink's run succeeded:\n{err}");
    assert!(took < Duration::from_secs(15), "the run took {took:?}: the sink slept");
    for want in ["table", "sleepy_sink.wat", "52"] {
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    assert!(!err.contains("thread '"), "the host panicked:\n{err}");
}

#[test]
fn a_cluster_speaking_mutual_tls_counts_exactly_while_strangers_knock_on_its_ports() {
    let mut c = Cluster::with_auth("tls", 0, Some(AUTH));
    let certs = c.sb.path("certs");
    let dir = certs.display().to_string();
    assert_eq!(hailstorm_env(&["certs", "init", &dir], &[]).0, Some(0));
    for n in 0..3 {
        let name = format!("w{n}");
        assert_eq!(hailstorm_env(&["certs", "issue", &dir, &name], &[]).0, Some(0));
        let data = c.sb.path(&format!("worker-{n}"));
        c.start_worker_with(&data, &["--tls-dir", &dir, "--tls-name", &name]);
    }
    let files = inputs(&c, 804, 60_000, 4);
    c.produce(&files[..1]); // the topic exists before the deploy
    let producer = c.produce_in_background(&files[1..], Duration::from_millis(300));
    assert_ok(&c.deploy(&[]));
    // Strangers: plaintext bytes, and a TLS hello without a certificate, on every worker's port.
    for n in 0..3 {
        let addr = c.worker_addr(n).expect("a worker address");
        for junk in [&b"\x00\x00\x00\x10hello, let me in"[..], b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"] {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = std::io::Write::write_all(&mut s, junk);
            }
        }
    }
    producer.join().expect("producer");
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    let refused = (0..3).filter(|&n| c.log(n).contains("dropped a connection from")).count();
    assert_eq!(refused, 3, "not every worker logged the strangers it refused:\n{}", c.logs());
    // `certs issue` never writes over a certificate.
    let (code, err) = hailstorm_env(&["certs", "issue", &dir, "w0"], &[]);
    assert_eq!(code, Some(2), "a certificate was written over:\n{err}");
}

#[test]
fn kafka_settings_from_a_file_reach_every_kafka_client() {
    let sb = Sandbox::new();
    let settings = sb.path("kafka.properties");
    let input = sb.path("in.txt");
    std::fs::write(&input, "one line\nand another\n").expect("write");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let topic = format!("settings-{}-{stamp}", std::process::id());
    let produce = |text: &str| {
        std::fs::write(&settings, text).expect("write settings");
        let args = ["produce", "--brokers", &crate::cluster::kafka(), "--topic", &topic, &input.display().to_string()];
        hailstorm_env(&args, &[("HAILSTORM_KAFKA_CONFIG", &settings.display().to_string())])
    };
    let (code, err) = produce("# a harmless setting\nclient.id = hailstorm-settings-test\n");
    assert_eq!(code, Some(0), "{err}");
    // librdkafka itself refuses what it does not know: the setting reached it.
    let (code, err) = produce("no.such.setting = 1\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("no.such.setting") && err.contains("kafka.properties"), "{err}");
    let (code, err) = produce("bootstrap.servers = elsewhere:9092\n");
    assert_ne!(code, Some(0));
    assert!(err.contains("kafka.properties:1: `bootstrap.servers` is set by Hailstorm itself"), "{err}");
}

#[test]
fn compiled_modules_are_cached_in_a_private_directory_and_a_damaged_entry_is_compiled_again() {
    modules();
    let sb = Sandbox::new();
    let cache = sb.path("cache");
    let dir = cache.display().to_string();
    let env = [("HAILSTORM_CACHE_DIR", dir.as_str()), ("HAILSTORM_LOG", "hailstorm=debug")];
    let file = topology("topologies/wordcount.toml").display().to_string();
    let validate = || {
        let (code, err) = hailstorm_env(&["validate", &file], &env);
        assert_eq!(code, Some(0), "{err}");
        err
    };
    let first = validate();
    assert!(first.contains("compiled") && !first.contains("from the compile cache"), "{first}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).expect("the cache directory").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the cache directory is open to others: {mode:o}");
    let second = validate();
    assert!(second.contains("from the compile cache") && !second.contains("compiled\n"), "{second}");
    // Damaged entries are compiled again, with a warning.
    for e in walk(&cache) {
        if e.extension().is_none() && !e.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            std::fs::write(&e, b"junk").expect("damage");
        }
    }
    let third = validate();
    assert!(third.contains("compiled"), "{third}");
}
