//! No PII or key bytes in logs or statuses: everything the vault logs
//! during the suite is captured and searched.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use idvault_tests::idvault_proto::v1::{CreateSubjectRequest, UpdateSubjectRequest};
use idvault_tests::{Backend, TestVault};

use crate::subjects::fields;

static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Routes all tracing output (debug and up) of the test process to a
/// buffer, in the vault's JSON log format (`--log-format json`).
pub fn install_capture() {
    let buf = CAPTURED.get_or_init(Default::default).clone();
    let writer = move || Capture(buf.clone());
    let _ = idvault_tests::idvault_server::logging::install(
        idvault_tests::idvault_server::logging::LogFormat::Json,
        tracing_subscriber::EnvFilter::new("debug,h2=info,hyper=info,rustls=info,tower=info"),
        writer,
    );
}

fn captured() -> String {
    String::from_utf8_lossy(&CAPTURED.get().unwrap().lock().unwrap()).into_owned()
}

pub async fn no_pii_in_logs_or_statuses(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let marker = "Quixotic-Marmalade-0451";
    let mut c = tv.subjects("partner-a").await?;
    let id = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("email", &format!("{marker}@example.org"))]),
        })
        .await?
        .into_inner()
        .subject_id;
    let mut statuses = Vec::new();
    for f in [
        fields(&[("email", &format!("{marker}\u{1}"))]),
        fields(&[(marker, "x")]),
        fields(&[("city", &marker.repeat(300))]),
    ] {
        let e = c
            .create_subject(CreateSubjectRequest { fields: f.clone() })
            .await
            .unwrap_err();
        statuses.push(format!("{e:?}"));
        let e = c
            .update_subject(UpdateSubjectRequest {
                subject_id: id.clone(),
                fields: f,
            })
            .await
            .unwrap_err();
        statuses.push(format!("{e:?}"));
    }
    // Bridge import and log tokenizing with the marker in bad identifiers.
    use idvault_tests::idvault_proto::v1::token_service_client::TokenServiceClient;
    use idvault_tests::idvault_proto::v1::{
        BridgeIdentifier, BridgeRecord, IdentifierType, ImportBridgeRequest, LogFormat,
        TokenizeLogRequest, TokenizeMode, TokenizeSettings,
    };
    let mut t = TokenServiceClient::new(tv.channel("partner-a").await?);
    let bad = BridgeRecord {
        record_id: "r".into(),
        identifiers: vec![BridgeIdentifier {
            r#type: IdentifierType::Msisdn.into(),
            value: marker.into(),
            sealed_value: Vec::new(),
        }],
        ..Default::default()
    };
    let r = t
        .import_bridge(tokio_stream::iter(vec![ImportBridgeRequest {
            records: vec![bad],
            default_country_code: 0,
        }]))
        .await?
        .into_inner();
    statuses.push(format!("{r:?}"));
    let settings = TokenizeSettings {
        format: LogFormat::JsonLines.into(),
        fields: vec!["m=msisdn".into()],
        mode: TokenizeMode::CrossReference.into(),
        ..Default::default()
    };
    let line = format!("{{\"m\":\"{marker}\"}}\n{{\"m\":\"+447700900123\"}}\n{{\"m\":\"{marker}");
    let reqs = vec![TokenizeLogRequest {
        settings: Some(settings),
        data: line.into_bytes(),
    }];
    let mut out = t.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    while let Some(m) = out.message().await? {
        statuses.push(format!("{m:?}"));
    }
    let root_key = std::fs::read_to_string(tv.dir.path().join("root.key"))?;
    let key_hex = root_key
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_owned();
    tv.stop().await?;
    let logs = captured();
    assert!(
        logs.contains("TLS") || logs.contains("sqlx") || !logs.is_empty(),
        "capture works"
    );
    for s in &statuses {
        assert!(!s.contains(marker), "PII in status: {s}");
    }
    // Every line is one JSON object; each answered call has its access
    // line with the request id, partner, method, outcome and latency.
    let mut access = Vec::new();
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:.200}"));
        assert!(v.is_object(), "not an object: {line:.200}");
        assert!(v.get("timestamp").is_some() && v.get("level").is_some());
        if v["target"] == "idvault::access" {
            access.push(v);
        }
    }
    let create = "/idvault.v1.SubjectService/CreateSubject";
    let line_for = |outcome: &str| {
        access
            .iter()
            .find(|v| v["rpc"] == create && v["outcome"] == outcome && v["partner"] == "partner-a")
    };
    for outcome in ["OK", "INVALID_ARGUMENT"] {
        let v = line_for(outcome).unwrap_or_else(|| panic!("no {outcome} access line"));
        let id = v["request_id"].as_str().unwrap();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["spiffe_id"], "spiffe://idvault.dev/partner/partner-a");
    }
    assert!(!logs.contains(marker), "PII in logs");
    assert!(!logs.contains(&key_hex), "root key in logs");
    Ok(())
}
