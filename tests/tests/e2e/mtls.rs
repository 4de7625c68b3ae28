//! The mTLS edge: who is refused at the handshake, and who is refused later.

use std::sync::Arc;

use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_proto::v1::CreateSubjectRequest;
use idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_tests::idvault_server::devinit::{ClientSpec, DevCa, Issued};
use idvault_tests::{Backend, TestVault};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::subjects::fields;

/// Connects with raw rustls, completes the client side of the handshake,
/// then reads: a server that refuses the client certificate answers with
/// an alert. Returns the error text, or `Ok` if the server accepted.
async fn handshake(tv: &TestVault, client: Option<&Issued>) -> Result<(), String> {
    handshake_from(tv, client, [127, 0, 0, 1]).await
}

/// [`handshake`] from local address `from` (any of 127.0.0.0/8).
async fn handshake_from(
    tv: &TestVault,
    client: Option<&Issued>,
    from: [u8; 4],
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tv.ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(i) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(i.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = connect_from(tv, from).await.map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed without data".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A TCP connection to the vault from local address `from`.
async fn connect_from(tv: &TestVault, from: [u8; 4]) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    socket.connect(tv.addr).await
}

/// TLS handshakes in progress are counted per source: idle connections
/// from one host take its 32 places, after which its next connection is
/// dropped at once, while another host of its network still connects (a
/// network holds 64), and the host gets its places back as its idle
/// connections end. Before, one host's idle connections took every one
/// of the 1,024 places, and everyone's new connections were dropped.
pub async fn handshakes_are_counted_per_source(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::tls::HANDSHAKES_PER_SOURCE;
    let tv = TestVault::start(b).await?;
    let partner = partner_a(&tv);
    let mut idle = Vec::new();
    for _ in 0..HANDSHAKES_PER_SOURCE {
        idle.push(connect_from(&tv, [127, 0, 0, 1]).await?);
    }
    // The server takes the places as it accepts them.
    let mut dropped = false;
    for _ in 0..50 {
        if handshake_from(&tv, Some(&partner), [127, 0, 0, 1])
            .await
            .is_err()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dropped, "a host past its share still got a handshake");
    handshake_from(&tv, Some(&partner), [127, 0, 0, 2])
        .await
        .map_err(|e| anyhow::anyhow!("another host of the network was refused: {e}"))?;
    drop(idle);
    let mut back = false;
    for _ in 0..50 {
        if handshake_from(&tv, Some(&partner), [127, 0, 0, 1])
            .await
            .is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "the host's places did not come back");
    tv.stop().await
}

async fn refused(tv: &TestVault, client: Option<&Issued>, alert: &str) {
    let err = handshake(tv, client)
        .await
        .expect_err("handshake must be refused");
    assert!(err.contains(alert), "expected alert {alert}, got: {err}");
    // A gRPC call over the same credentials fails too, at the transport.
    if let Some(i) = client {
        match tv.channel_with(i).await {
            // Refused while connecting: also a transport-level refusal.
            Err(_) => {}
            Ok(ch) => {
                let e = SubjectServiceClient::new(ch)
                    .create_subject(CreateSubjectRequest {
                        fields: fields(&[("city", "X")]),
                    })
                    .await
                    .unwrap_err();
                assert!(
                    matches!(
                        e.code(),
                        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                    ),
                    "{e:?}"
                );
            }
        }
    }
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, 0);
}

fn partner_a(tv: &TestVault) -> Issued {
    Issued {
        cert_pem: std::fs::read_to_string(tv.tls_dir().join("partner-a.crt")).unwrap(),
        key_pem: zeroize::Zeroizing::new(
            std::fs::read_to_string(tv.tls_dir().join("partner-a.key")).unwrap(),
        ),
        serial: vec![],
    }
}

pub async fn no_client_certificate(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    refused(&tv, None, "CertificateRequired").await;
    handshake(&tv, Some(&partner_a(&tv)))
        .await
        .expect("a valid partner is accepted");
    tv.stop().await
}

pub async fn certificate_from_another_ca(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let rogue = DevCa::generate("rogue CA", &SystemRng::default())?;
    let cert = rogue.issue_client(
        &ClientSpec::partner("idvault.dev", "partner-a", 30),
        &SystemRng::default(),
    )?;
    refused(&tv, Some(&cert), "UnknownCA").await;
    tv.stop().await
}

pub async fn expired_certificate(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let now = OffsetDateTime::now_utc();
    let spec = ClientSpec {
        not_before: now - Duration::days(30),
        not_after: now - Duration::days(1),
        ..ClientSpec::partner("idvault.dev", "partner-a", 1)
    };
    refused(&tv, Some(&tv.issue(&spec)), "CertificateExpired").await;
    tv.stop().await
}

pub async fn revoked_certificate(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_with(b, |dir, ca| {
        let rng = SystemRng::default();
        let revoked =
            ca.issue_client(&ClientSpec::partner("idvault.dev", "partner-a", 30), &rng)?;
        std::fs::write(dir.join("tls/revoked.crt"), &revoked.cert_pem)?;
        std::fs::write(dir.join("tls/revoked.key"), revoked.key_pem.as_bytes())?;
        std::fs::write(dir.join("tls/partners.crl"), ca.crl(&[revoked.serial])?)?;
        Ok("crls = [\"tls/partners.crl\"]".into())
    })
    .await?;
    let revoked = Issued {
        cert_pem: std::fs::read_to_string(tv.tls_dir().join("revoked.crt"))?,
        key_pem: zeroize::Zeroizing::new(std::fs::read_to_string(
            tv.tls_dir().join("revoked.key"),
        )?),
        serial: vec![],
    };
    refused(&tv, Some(&revoked), "CertificateRevoked").await;
    // The same partner's unrevoked certificate still works: it is the CRL.
    handshake(&tv, Some(&partner_a(&tv)))
        .await
        .expect("unrevoked certificate accepted");
    tv.stop().await
}

pub async fn certificate_without_partner_san(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let spec = ClientSpec {
        uri_sans: vec![],
        ..ClientSpec::partner("idvault.dev", "partner-a", 30)
    };
    refused(&tv, Some(&tv.issue(&spec)), "AccessDenied").await;
    let spec = ClientSpec {
        uri_sans: vec!["spiffe://idvault.dev/service/partner-a".into()],
        ..ClientSpec::partner("idvault.dev", "partner-a", 30)
    };
    refused(&tv, Some(&tv.issue(&spec)), "AccessDenied").await;
    let spec = ClientSpec {
        uri_sans: vec![
            "spiffe://idvault.dev/partner/partner-a".into(),
            "spiffe://idvault.dev/partner/partner-b".into(),
        ],
        ..ClientSpec::partner("idvault.dev", "partner-a", 30)
    };
    refused(&tv, Some(&tv.issue(&spec)), "AccessDenied").await;
    tv.stop().await
}

pub async fn certificate_from_another_trust_domain(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let cert = tv.issue(&ClientSpec::partner("other.example", "partner-a", 30));
    refused(&tv, Some(&cert), "AccessDenied").await;
    tv.stop().await
}

pub async fn unregistered_partner_is_denied_and_audited(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let cert = tv.issue(&ClientSpec::partner("idvault.dev", "partner-z", 30));
    let mut c = SubjectServiceClient::new(tv.channel_with(&cert).await?);
    let e = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Hanoi")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("not registered"));
    // Refusals of unregistered identities are coalesced: one leaf per
    // identity per interval, with the count.
    let _ = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Hue")]),
        })
        .await
        .unwrap_err();
    tv.checkpointed().await?;
    let mut row: Option<(String, String, String)> = None;
    for _ in 0..50 {
        row =
            sqlx::query_as("SELECT actor, outcome, detail FROM audit_log WHERE action = 'Refused'")
                .fetch_optional(tv.db())
                .await?;
        if row.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (actor, outcome, detail) = row.expect("coalesced refusal audited");
    assert_eq!(actor, "spiffe://idvault.dev/partner/partner-z");
    assert_eq!(outcome, "denied");
    assert!(
        detail.starts_with("unregistered identity count=2"),
        "{detail}"
    );
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, 0);
    tv.stop().await
}

pub async fn health_and_reflection(b: Backend) -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let tv = TestVault::start(b).await?;
    let ch = tv.channel("partner-b").await?;
    let h = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "idvault.v1.SubjectService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(h.status(), ServingStatus::Serving);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let resp = stream.message().await?.expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"idvault.v1.SubjectService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    tv.stop().await
}

/// A client certificate that expires while its connection is open: the
/// vault closes the connection at its next check (`crl_poll_seconds`,
/// with or without CRLs), and the handshake then refuses the certificate;
/// other partners carry on. Before, a handshake checked validity once and
/// HTTP/2 pings kept the connection, and with it every call the expired
/// certificate's roles allow, open for good.
pub async fn expiry_closes_open_connections(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_with(b, |_, _| Ok("crls = []\ncrl_poll_seconds = 1".into())).await?;
    let now = OffsetDateTime::now_utc();
    let spec = ClientSpec {
        not_before: now - Duration::minutes(5),
        not_after: now + Duration::seconds(3),
        ..ClientSpec::partner("idvault.dev", "partner-a", 1)
    };
    let short = tv.issue(&spec);
    let mut a = SubjectServiceClient::new(tv.channel_with(&short).await?);
    let mut b_client = SubjectServiceClient::new(tv.channel("partner-b").await?);
    let create = || CreateSubjectRequest {
        fields: fields(&[("given_name", "Ada")]),
    };
    a.create_subject(create()).await?;
    let mut closed = false;
    for _ in 0..150 {
        if a.create_subject(create()).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "the expired certificate's connection stayed usable");
    assert!(
        OffsetDateTime::now_utc() > spec.not_after,
        "closed before the certificate expired"
    );
    let err = handshake(&tv, Some(&short)).await.unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    b_client.create_subject(create()).await?;
    tv.stop().await
}

/// A CRL rewritten while the vault runs takes effect without a restart:
/// the revoked partner's open HTTP/2 connection is closed and it cannot
/// connect again, while other partners carry on. A CRL past its
/// `nextUpdate` then refuses everyone it covers (`stale_crl = "refuse"`,
/// the default).
pub async fn crl_reload_closes_revoked_connections(b: Backend) -> anyhow::Result<()> {
    let spec = ClientSpec::partner("idvault.dev", "partner-a", 30);
    let tv = TestVault::start_with(b, |dir, ca| {
        std::fs::write(dir.join("tls/partners.crl"), ca.crl(&[])?)?;
        Ok("crls = [\"tls/partners.crl\"]\ncrl_poll_seconds = 1".into())
    })
    .await?;
    let victim = tv.issue(&spec);
    let mut a = SubjectServiceClient::new(tv.channel_with(&victim).await?);
    let mut b_client = SubjectServiceClient::new(tv.channel("partner-b").await?);
    let create = || CreateSubjectRequest {
        fields: fields(&[("given_name", "Ada")]),
    };
    a.create_subject(create()).await?;
    b_client.create_subject(create()).await?;
    assert!(tv.client_auth.open_connections() >= 2);

    // Revoke partner-a's certificate by rewriting the CRL file.
    let now = OffsetDateTime::now_utc();
    std::fs::write(
        tv.tls_dir().join("partners.crl"),
        tv.ca.crl_valid(
            std::slice::from_ref(&victim.serial),
            now - Duration::minutes(1),
            now + Duration::days(1),
            2,
        )?,
    )?;
    let mut closed = false;
    for _ in 0..100 {
        if a.create_subject(create()).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "the revoked partner's connection stayed usable");
    // It cannot come back (not by resuming its TLS session either: the
    // channel reconnects by itself).
    let err = handshake(&tv, Some(&victim)).await.unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(a.create_subject(create()).await.is_err());
    b_client.create_subject(create()).await?;

    // A stale CRL (past its nextUpdate) refuses what it covers.
    std::fs::write(
        tv.tls_dir().join("partners.crl"),
        tv.ca
            .crl_valid(&[], now - Duration::days(2), now - Duration::days(1), 3)?,
    )?;
    let mut refused_b = false;
    for _ in 0..100 {
        if b_client.create_subject(create()).await.is_err() {
            refused_b = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused_b, "a stale CRL was still trusted");
    assert!(
        handshake(&tv, Some(&partner_a(&tv))).await.is_err(),
        "handshake accepted under a stale CRL"
    );
    tv.stop().await?;

    // With stale_crl = "warn" the same CRL is used (and an error logged).
    let tv = TestVault::start_with(b, |dir, ca| {
        std::fs::write(
            dir.join("tls/partners.crl"),
            ca.crl_valid(&[], now - Duration::days(2), now - Duration::days(1), 3)?,
        )?;
        Ok("crls = [\"tls/partners.crl\"]\nstale_crl = \"warn\"".into())
    })
    .await?;
    handshake(&tv, Some(&partner_a(&tv)))
        .await
        .expect("stale CRL with stale_crl = warn");
    tv.stop().await
}

/// One identity holds at most `MAX_CONNECTIONS_PER_IDENTITY` open
/// connections: past that, a new connection is dropped after its
/// handshake (its first call fails), another partner still connects, and
/// a connection closed frees a place.
pub async fn open_connections_per_identity_are_bounded(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::crl::MAX_CONNECTIONS_PER_IDENTITY;
    let tv = TestVault::start(b).await?;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_IDENTITY {
        let ch = tv.channel("partner-b").await?;
        health_check(ch.clone()).await?;
        held.push(ch);
    }
    let one_more = tv.channel("partner-b").await?;
    assert!(
        health_check(one_more).await.is_err(),
        "a connection past the limit"
    );
    health_check(tv.channel("partner-a").await?).await?;
    // Dropping one held connection frees a place (the server sees the
    // close a moment later).
    drop(held.pop());
    let admitted = admitted_soon(&tv, "partner-b", None).await;
    assert!(admitted, "a freed place was not given back");
    drop(held);
    tv.stop().await
}

/// A wallet app's certificate is shared by every phone (and by anyone who
/// extracts it from the app), so its connections are counted per source
/// address: one source holds at most `SHARED_CONNECTIONS_PER_SOURCE`,
/// past that its new connections are dropped after the handshake, while
/// the same identity from another source still connects, as do partners.
pub async fn wallet_connections_are_counted_per_source(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::sources::SHARED_CONNECTIONS_PER_SOURCE;
    use std::net::{IpAddr, Ipv4Addr};
    let tv = TestVault::start(b).await?;
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    // Another host in another network (127.0.1.0/24).
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 4));
    let mut held = Vec::new();
    for _ in 0..SHARED_CONNECTIONS_PER_SOURCE {
        let ch = tv.channel_from("wallet", one).await?;
        health_check(ch.clone()).await?;
        held.push(ch);
    }
    // The source's share is taken: dropped after the handshake (the
    // connect or the first call fails).
    let refused = match tv.channel_from("wallet", one).await {
        Ok(ch) => health_check(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a wallet connection past its source's share");
    // The same identity from another source, and a partner from the
    // first, are not affected: the wallet's share is not the identity's
    // whole allowance, nor anyone else's.
    health_check(tv.channel_from("wallet", other).await?).await?;
    health_check(tv.channel_from("partner-a", one).await?).await?;
    // A closed connection gives its place back.
    drop(held.pop());
    let admitted = admitted_soon(&tv, "wallet", Some(one)).await;
    assert!(admitted, "a freed place was not given back");
    drop(held);
    tv.stop().await
}

/// Whether `partner` (from `from`, when given) connects and is answered
/// within about 2 s (the server sees a closed connection, and frees its
/// place, a moment after the client drops it).
async fn admitted_soon(tv: &TestVault, partner: &str, from: Option<std::net::IpAddr>) -> bool {
    for _ in 0..100 {
        let ch = match from {
            Some(ip) => tv.channel_from(partner, ip).await,
            None => tv.channel(partner).await,
        };
        if let Ok(ch) = ch
            && health_check(ch).await.is_ok()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// A gRPC health check over `ch`: answered only on a connection the vault
/// kept.
async fn health_check(
    ch: tonic::transport::Channel,
) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
}
