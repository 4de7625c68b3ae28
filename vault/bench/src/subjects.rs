//! `idvault bench subjects`: CreateSubject RPCs over mTLS from many
//! connections against an in-process vault: RPC/s and latency.

use std::time::Instant;

use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_proto::v1::{CreateSubjectRequest, Field};

use crate::BenchError;

/// Sends `count` CreateSubject RPCs (3 fields each) from `concurrency`
/// mTLS connections; prints RPC/s, fields/s and p50/p99 latency.
pub async fn run(
    count: usize,
    concurrency: usize,
    database_url: Option<String>,
) -> Result<(), BenchError> {
    let vault = crate::InProcess::start(database_url).await?;
    let per = count.div_ceil(concurrency.max(1));
    // The connections' set-up (mTLS handshakes) counts in the CPU, as it
    // does in the wall time.
    let cpu = crate::cpu::CpuMark::now();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let ch = vault.channel("partner-a").await?;
        tasks.push(tokio::spawn(async move {
            let mut c = SubjectServiceClient::new(ch);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let req = CreateSubjectRequest {
                    fields: vec![
                        Field {
                            name: "given_name".into(),
                            value: format!("Given{w}x{i}"),
                        },
                        Field {
                            name: "family_name".into(),
                            value: "Benchmark".into(),
                        },
                        Field {
                            name: "email".into(),
                            value: format!("p{w}x{i}@example.org"),
                        },
                    ],
                };
                let s = Instant::now();
                c.create_subject(req).await?;
                lat.push(s.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(count);
    for task in tasks {
        lat.extend(task.await??);
    }
    let elapsed = t.elapsed();
    let cpu = cpu.since();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "CreateSubject over mTLS, 3 fields, {} RPCs, {concurrency} connections, storage {}",
        lat.len(),
        vault.backend()
    );
    println!(
        "throughput: {:>10.0} RPC/s ({:.0} packets sealed and stored/s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        3.0 * lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!("latency:    p50 {:?}  p99 {:?}", pct(0.50), pct(0.99));
    if let Some(c) = cpu {
        println!("CPU:        {}", c.summary(lat.len()));
    }
    vault.stop().await
}
