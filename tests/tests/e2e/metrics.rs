//! The Prometheus endpoint: scraped over HTTP and read with a Prometheus
//! text-format parser; values move as requests are made, and no label
//! value ever comes from what a caller sent.

use std::collections::HashMap;

use idvault_tests::idvault_proto::v1::CreateSubjectRequest;
use idvault_tests::{Backend, TestVault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::subjects::fields;

/// `GET path` on the metrics listener: (status, content type, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status"))?
        .parse()?;
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, ctype, body.to_owned()))
}

/// One scrape, parsed: `(name, sorted labels) -> value`.
struct Scrape {
    text: String,
    samples: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    async fn take(tv: &TestVault) -> anyhow::Result<Self> {
        let addr = tv.metrics_addr.expect("the dev config serves metrics");
        let (status, ctype, text) = get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
        let mut samples = HashMap::new();
        for s in parsed.samples {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    // The `+Inf` bucket is the count.
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            samples.insert((s.metric, labels), v);
        }
        Ok(Self { text, samples })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.sort();
        self.samples
            .get(&(name.to_owned(), l))
            .copied()
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| n == name)
    }
}

const CREATE: &str = "/idvault.v1.SubjectService/CreateSubject";

pub async fn scraped_values_move_and_labels_are_bounded(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let marker = "Zanzibar-Pumpernickel-7731";
    let before = Scrape::take(&tv).await?;
    // Every registered partner has an outbox series, and nothing else.
    for p in ["partner-a", "partner-b", "wallet"] {
        assert!(
            before
                .text
                .contains(&format!("idvault_outbox_depth{{partner=\"{p}\"}}")),
            "{p}"
        );
    }
    let mut c = tv.subjects("partner-a").await?;
    for _ in 0..3 {
        c.create_subject(CreateSubjectRequest {
            fields: fields(&[("email", &format!("{marker}@example.org"))]),
        })
        .await?;
    }
    // Refused by validation, with the marker in the field name.
    let bad = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[(marker, "x")]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Refused by policy: the wallet may not create subjects.
    let denied = tv
        .subjects("wallet")
        .await?
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Nowhere")]),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // A method the vault does not serve, named after the marker.
    let mut raw = tonic::client::Grpc::new(tv.channel("partner-a").await?);
    raw.ready().await?;
    let unknown = raw
        .unary::<CreateSubjectRequest, CreateSubjectRequest, _>(
            tonic::Request::new(CreateSubjectRequest::default()),
            http::uri::PathAndQuery::from_maybe_shared(format!(
                "/idvault.v1.SubjectService/{marker}"
            ))?,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    // The sequencer checkpoints within a second; wait for it to show.
    let mut after = Scrape::take(&tv).await?;
    for _ in 0..50 {
        if after.value("idvault_audit_tree_size", &[]) > 0.0
            && after.value("idvault_audit_unsequenced_leaves", &[]) == 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = Scrape::take(&tv).await?;
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta(
            "idvault_rpc_requests_total",
            &[("method", CREATE), ("code", "OK")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "idvault_rpc_requests_total",
            &[("method", CREATE), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "idvault_rpc_requests_total",
            &[("method", CREATE), ("code", "PERMISSION_DENIED")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "idvault_rpc_requests_total",
            &[("method", "other"), ("code", "UNIMPLEMENTED")]
        ),
        1.0
    );
    assert_eq!(
        delta("idvault_refusals_total", &[("reason", "invalid")]),
        1.0
    );
    assert_eq!(
        delta("idvault_refusals_total", &[("reason", "policy")]),
        1.0
    );
    // The latency histogram counted the same calls.
    assert!(
        after.text.contains(&format!(
            "idvault_rpc_duration_seconds_count{{method=\"{CREATE}\",code=\"OK\"}} 3"
        )),
        "histogram count"
    );
    assert!(after.value("idvault_audit_tree_size", &[]) > 0.0);
    assert!(after.has("idvault_audit_checkpoint_age_seconds"));
    assert!(after.value("idvault_store_pool_max_connections", &[]) >= 1.0);
    assert!(after.text.contains("idvault_store_write_batch_size_count"));
    assert!(after.text.contains("idvault_rewrap_running 0"));
    // Nothing the caller sent is in any label or anywhere else.
    assert!(!after.text.contains(marker), "caller input in the metrics");
    // Label values come from bounded sets only.
    for (name, labels) in after.samples.keys() {
        for (k, v) in labels {
            let ok = match k.as_str() {
                "method" => {
                    v == "other" || v.starts_with("/idvault.v1.") || v.starts_with("/grpc.")
                }
                "code" => v.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "partner" => ["partner-a", "partner-b", "wallet"].contains(&v.as_str()),
                "reason" => [
                    "unregistered",
                    "policy",
                    "rate_limit",
                    "admission",
                    "deadline",
                    "invalid",
                ]
                .contains(&v.as_str()),
                "state" => v == "busy" || v == "idle",
                "phase" => ["subjects", "links", "row-macs", "audit-leaves"].contains(&v.as_str()),
                "le" | "quantile" => true,
                _ => false,
            };
            assert!(ok, "{name}: label {k}={v}");
        }
    }
    // Only /metrics is served.
    let (status, _, _) = get(tv.metrics_addr.unwrap(), "/other").await?;
    assert_eq!(status, 404);
    tv.stop().await?;
    Ok(())
}
