// SCRATCH: delete before commit.
use hailstorm::kafka::*;
use hailstorm::spout::RecordBatch;
use std::time::{Duration, Instant};

fn read_all(brokers: &str, topic: &str, from_middle: bool) -> anyhow::Result<()> {
    let highs = high_watermarks(brokers, topic, Duration::from_secs(10))?;
    let t = Instant::now();
    let mut threads = Vec::new();
    for (p, &high) in highs.iter().enumerate() {
        let (b, tp) = (brokers.to_string(), topic.to_string());
        threads.push(std::thread::spawn(move || -> anyhow::Result<(u64, u64, u64)> {
            let start = if from_middle {
                std::env::var("MID").ok().and_then(|m| m.parse().ok()).unwrap_or(high / 2 + 7)
            } else {
                0
            };
            let mut s = KafkaSource::open(&b, &tp, p as u32, start, Duration::from_secs(10))?;
            let mut batch = RecordBatch::default();
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut expect = start;
            while s.position() < high {
                s.read_batch(4096, 1 << 20, Duration::from_secs(60), &mut batch)?;
                anyhow::ensure!(!batch.is_empty(), "stalled at {}", s.position());
                for (&o, r) in batch.offsets.iter().zip(batch.records()) {
                    anyhow::ensure!(o == expect, "offset {o} expected {expect}");
                    expect += 1;
                    bytes += r.len() as u64;
                }
                n += batch.len() as u64;
            }
            Ok((n, bytes, high - start))
        }));
    }
    let mut total = 0;
    let mut want = 0;
    for th in threads {
        let (n, _b, w) = th.join().unwrap()?;
        total += n;
        want += w;
    }
    let el = t.elapsed();
    println!(
        "KafkaSource read {total} records (expected {want}) in {el:?}: {:.0} records/s",
        total as f64 / el.as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(std::env::var("SL").unwrap_or_else(|_| "info".into())))
        .init();
    let args: Vec<String> = std::env::args().collect();
    let kb = std::env::var("KB").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let b = kb.as_str();
    match args[1].as_str() {
        "produce" => {
            let p = produce(b, &args[2], Some(4), &[args[3].clone().into()], args[4].parse()?)?;
            println!(
                "produced {} records to {} partitions in {:?}: {:.0} records/s",
                p.records,
                p.partitions,
                p.elapsed,
                p.records as f64 / p.elapsed.as_secs_f64()
            );
        }
        "read" => read_all(b, &args[2], false)?,
        "read-middle" => read_all(b, &args[2], true)?,
        "raw" => {
            let (r, by, el) = raw_read(b, &args[2], Duration::from_secs(10))?;
            println!("raw_read {r} records {by} bytes in {el:?}: {:.0} records/s", r as f64 / el.as_secs_f64());
        }
        "highs" => println!("{:?}", high_watermarks(&args[3], &args[2], Duration::from_secs(10))),
        "count" => {
            println!("{:?}", partition_count(&args[3], &args[2], Duration::from_secs(10)).map_err(|e| e.to_string()))
        }
        "open" => println!(
            "{:?}",
            KafkaSource::open(&args[3], &args[2], args[4].parse()?, args[5].parse()?, Duration::from_secs(10))
                .map(|s| s.describe())
                .map_err(|e| e.to_string())
        ),
        "readfrom" => {
            let mut s = KafkaSource::open(b, &args[2], args[3].parse()?, args[4].parse()?, Duration::from_secs(10))?;
            let mut batch = RecordBatch::default();
            let t = Instant::now();
            loop {
                let r = s.read_batch(100, 1 << 20, Duration::from_secs(1), &mut batch);
                println!(
                    "{:?} after {:?}: {:?} records, position {}",
                    r.as_ref().map_err(|e| e.to_string()),
                    t.elapsed(),
                    batch.len(),
                    s.position()
                );
                if r.is_err() {
                    break;
                }
            }
        }
        "dump" => {
            use std::io::Write;
            let highs = high_watermarks(b, &args[2], Duration::from_secs(10))?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            for (p, &high) in highs.iter().enumerate() {
                let mut s = KafkaSource::open(b, &args[2], p as u32, 0, Duration::from_secs(10))?;
                let mut batch = RecordBatch::default();
                while s.position() < high {
                    s.read_batch(4096, 1 << 20, Duration::from_secs(5), &mut batch)?;
                    for (&o, r) in batch.offsets.iter().zip(batch.records()) {
                        writeln!(out, "{p}\t{o}\t{}", String::from_utf8_lossy(r))?;
                    }
                }
            }
        }
        _ => unreachable!(),
    }
    Ok(())
}
