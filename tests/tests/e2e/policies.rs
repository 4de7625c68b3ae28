//! Partner access policies (Cedar) over mTLS: default deny, decisions
//! audited with the deciding policy ids, an operator's own policies,
//! start refused on an invalid set with its location, and reload keeping
//! the old set when the new one is invalid.

use idvault_tests::idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_tests::idvault_proto::v1::{CreateSubjectRequest, Field, MatchQuery, MatchRequest};
use idvault_tests::{Backend, TestVault};
use tonic::Code;

fn field(n: &str, v: &str) -> Field {
    Field {
        name: n.into(),
        value: v.into(),
    }
}

async fn create(tv: &TestVault, partner: &str) -> Result<String, tonic::Status> {
    Ok(tv
        .subjects(partner)
        .await
        .unwrap()
        .create_subject(CreateSubjectRequest {
            fields: vec![
                field("given_name", "Ada"),
                field("email", "ada@example.org"),
            ],
        })
        .await?
        .into_inner()
        .subject_id)
}

async fn matches(tv: &TestVault, partner: &str) -> Result<(), tonic::Status> {
    MatchServiceClient::new(tv.channel(partner).await.unwrap())
        .r#match(MatchRequest {
            query: Some(MatchQuery {
                fields: vec![
                    field("given_name", "Ada"),
                    field("family_name", "Lovelace"),
                    field("email", "ada@example.org"),
                ],
                max_results: 1,
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

/// `(action, outcome, detail)` of every audit record, in order.
async fn audit(tv: &TestVault) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT action, outcome, detail FROM audit_log ORDER BY id")
        .fetch_all(tv.db())
        .await
        .unwrap()
}

fn policy_dir(tv: &TestVault) -> std::path::PathBuf {
    tv.dir.path().join("policies")
}

const FORBID_MATCH_A: &str = r#"// Partner-a is under review: no blind matching.
@id("freeze-partner-a-matching")
forbid (
  principal == IdVault::Partner::"partner-a",
  action == IdVault::Action::"Match",
  resource
);
"#;

/// A partner the registry knows but no policy permits is denied (default
/// deny); allowed and denied calls are audited with the deciding policies.
pub async fn default_deny_and_decisions_audited(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_config(b, |t| {
        // partner-b loses every role: nothing permits it anything.
        let from = "roles = [\"subjects.write\", \"subjects.verify\", \"subjects.match\", \"tokens.tokenize\", \"consent.release\", \"events.publish\", \"commands.receive\", \"audit.read\", \"transactions.request\"]";
        assert!(t.contains(from), "the dev config changed: {t}");
        t.replace(from, "roles = []")
    })
    .await?;
    create(&tv, "partner-a").await?;
    let e = create(&tv, "partner-b").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = matches(&tv, "partner-b").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let a = audit(&tv).await;
    let created: Vec<_> = a.iter().filter(|r| r.0 == "CreateSubject").collect();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].1, "ok");
    assert!(
        created[0].2.ends_with("policy=subjects-write"),
        "{:?}",
        created[0]
    );
    assert_eq!(created[1].1, "denied");
    assert!(
        created[1].2.ends_with("policy=default-deny"),
        "{:?}",
        created[1]
    );
    tv.stop().await
}

/// An operator's forbid policy overrides the role grant, is named in the
/// audit record, and leaves other actions alone.
pub async fn operator_forbid_overrides_and_is_named(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    create(&tv, "partner-a").await?;
    matches(&tv, "partner-a").await?;
    std::fs::write(policy_dir(&tv).join("review.cedar"), FORBID_MATCH_A)?;
    tv.restart().await?;
    let e = matches(&tv, "partner-a").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    create(&tv, "partner-a").await?;
    matches(&tv, "partner-b").await?;
    let a = audit(&tv).await;
    let denied = a
        .iter()
        .find(|r| r.0 == "Match" && r.1 == "denied")
        .expect("denied match audited");
    assert!(
        denied.2.ends_with("policy=freeze-partner-a-matching"),
        "{denied:?}"
    );
    tv.stop().await
}

/// An invalid policy set stops the vault from starting, naming the file,
/// line and column; so does an unknown attribute the schema lacks.
pub async fn invalid_policies_refuse_start_with_location(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let bad = policy_dir(&tv).join("zz-bad.cedar");
    std::fs::write(
        &bad,
        "@id(\"typo\")\npermit (\n  principal,\n  action == IdVault::Action::\"Match\",\n  resource\n) when { principal.rolez == \"x\" };\n",
    )?;
    let err = idvault_tests::idvault_server::app::load(&tv.config, &tv.database_url)
        .await
        .unwrap_err()
        .to_string();
    let at = format!("{}:6:", bad.display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("does not start"), "{err}");
    std::fs::write(&bad, "permit (principal, action, resource")?;
    let err = idvault_tests::idvault_server::app::load(&tv.config, &tv.database_url)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:1:", bad.display())), "{err}");
    tv.stop().await
}

/// Reload swaps the set atomically; an invalid new set is refused with its
/// location and the set in force stays.
pub async fn reload_swaps_and_keeps_old_set_on_error(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    create(&tv, "partner-a").await?;
    matches(&tv, "partner-a").await?;
    std::fs::write(policy_dir(&tv).join("review.cedar"), FORBID_MATCH_A)?;
    let n = tv.vault.reload_policies().expect("valid set");
    assert!(n >= 12, "{n}");
    assert_eq!(
        matches(&tv, "partner-a").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A broken edit: refused, located; the forbid stays in force.
    std::fs::write(
        policy_dir(&tv).join("review.cedar"),
        format!(
            "{FORBID_MATCH_A}\n@id(\"oops\")\npermit (principal, action, resource) when {{ context.nope }};\n"
        ),
    )?;
    let errs = tv.vault.reload_policies().unwrap_err();
    assert!(
        errs.iter().any(|e| e.file.ends_with("review.cedar")
            && e.line == 10
            && e.message.contains("`oops`")),
        "{errs:?}"
    );
    assert_eq!(
        matches(&tv, "partner-a").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Removing the file and reloading lifts the freeze.
    std::fs::remove_file(policy_dir(&tv).join("review.cedar"))?;
    tv.vault.reload_policies().expect("valid set");
    matches(&tv, "partner-a").await?;
    tv.stop().await
}

/// Decisions see the resource and the fields: an operator can forbid a
/// catalogue field to one partner, or hold one subject, and the refusal is
/// audited with the subject and the deciding policy.
pub async fn resource_and_field_policies(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::{UpdateSubjectRequest, VerifySubjectChainRequest};
    let mut tv = TestVault::start(b).await?;
    let held = create(&tv, "partner-a").await?;
    let free = create(&tv, "partner-a").await?;
    std::fs::write(
        policy_dir(&tv).join("operator.cedar"),
        format!(
            "@id(\"no-national-id-for-a\")\nforbid (principal == IdVault::Partner::\"partner-a\", action in [IdVault::Action::\"CreateSubject\", IdVault::Action::\"UpdateSubject\"], resource)\nwhen {{ context.fields.contains(\"national_id\") }};\n\
             @id(\"legal-hold\")\nforbid (principal, action, resource == IdVault::Subject::\"{held}\");\n"
        ),
    )?;
    tv.restart().await?;
    let mut s = tv.subjects("partner-a").await?;
    let e = s
        .create_subject(CreateSubjectRequest {
            fields: vec![
                field("given_name", "Ada"),
                field("national_id", "QQ123456C"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    create(&tv, "partner-a").await?;
    let e = s
        .update_subject(UpdateSubjectRequest {
            subject_id: free.clone(),
            fields: vec![field("national_id", "QQ123456C")],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    s.update_subject(UpdateSubjectRequest {
        subject_id: free.clone(),
        fields: vec![field("email", "ada@example.net")],
    })
    .await?;
    for subject in [&held, &free] {
        let r = s
            .verify_subject_chain(VerifySubjectChainRequest {
                subject_id: subject.clone(),
            })
            .await;
        assert_eq!(r.is_ok(), subject == &free, "{r:?}");
    }
    // Another partner naming the held subject learns nothing from the
    // hold: it is absent, as any id that is not its own.
    let mut b = tv.subjects("partner-b").await?;
    for subject in [&held, &free] {
        let e = b
            .verify_subject_chain(VerifySubjectChainRequest {
                subject_id: subject.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = b
            .update_subject(UpdateSubjectRequest {
                subject_id: subject.clone(),
                fields: vec![field("email", "x@example.net")],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT action, outcome, subject, detail FROM audit_log WHERE outcome = 'denied' ORDER BY id",
    )
    .fetch_all(tv.db())
    .await?;
    let got: Vec<(&str, Option<&str>, &str)> = rows
        .iter()
        .map(|(a, _, s, d)| {
            (
                a.as_str(),
                s.as_deref(),
                d.rsplit(' ').next().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("CreateSubject", None, "policy=no-national-id-for-a"),
            (
                "UpdateSubject",
                Some(free.as_str()),
                "policy=no-national-id-for-a"
            ),
            (
                "VerifySubjectChain",
                Some(held.as_str()),
                "policy=legal-hold"
            ),
        ]
    );
    // The values never reach the audit log.
    let details: Vec<String> = sqlx::query_scalar("SELECT detail FROM audit_log")
        .fetch_all(tv.db())
        .await?;
    assert!(details.iter().all(|d| !d.contains("QQ123456C")));
    tv.stop().await
}
