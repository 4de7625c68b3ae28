//! Events and rules from the network: a decoded PublishEventRequest
//! validated and run through a fixed rule set (a command never carries a
//! field its rule does not name), its fields sealed and opened again,
//! SetRules and AckCommandsRequest decoded and validated, and arbitrary
//! bytes opened as a sealed command payload.
#![no_main]
use idvault_core::rules::{self, Rule};
use idvault_core::secret::DataKey;
use idvault_core::subject::SubjectId;
use idvault_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const A: &str = "spiffe://idvault.dev/partner/partner-a";
const B: &str = "spiffe://idvault.dev/partner/partner-b";

/// A fixed RNG: the target checks parsing and field selection, not nonces.
struct Fixed;
impl idvault_core::Rng for Fixed {
    fn fill(&self, out: &mut [u8]) -> Result<(), idvault_core::crypto::CryptoError> {
        out.fill(7);
        Ok(())
    }
}

fn header<'a>(subject: &'a SubjectId, rule_id: &'a str) -> rules::CommandHeader<'a> {
    rules::CommandHeader {
        command_id: "cmd_x",
        recipient: "partner-b",
        subject,
        pairwise_token: "pw_x",
        source: A,
        event_type: "address.changed",
        command: "cmd",
        rule_id,
    }
}

fn rule_set() -> Vec<Rule> {
    ["address.changed", "a", "card.lost"]
        .iter()
        .map(|t| {
            Rule::from_pb(pb::Rule {
                rule_id: String::new(),
                source: A.into(),
                event_type: (*t).into(),
                target: B.into(),
                command: "cmd".into(),
                fields: vec!["a".into(), "address".into()],
            })
            .expect("valid rule")
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let dek = DataKey::from_bytes([5; 32], 1);
    let subject = SubjectId::from_bytes([1; 16]);
    if let Ok(r) = pb::PublishEventRequest::decode(data)
        && let Ok(ev) = idvault_core::wire::validate_event(r.event_type, r.event_id, r.fields)
    {
        let set = rule_set();
        for hit in rules::triggered(&set, A, &ev) {
            assert!(hit.fields.iter().all(|(n, _)| hit.rule.fields.contains(n)));
            let rule_id = hit.rule.id();
            let h = header(&subject, &rule_id);
            let sealed = rules::seal_payload(&dek, &h, &hit.fields, &Fixed).expect("seal");
            let opened = rules::open_payload(&dek, &h, &sealed).expect("open");
            assert_eq!(opened, hit.fields);
        }
    }
    if let Ok(s) = pb::SetRules::decode(data)
        && let Ok(set) = idvault_core::wire::rule_set(s.rules)
    {
        for r in &set {
            assert_eq!(Rule::from_pb(r.to_pb()).as_ref(), Ok(r));
        }
    }
    if let Ok(a) = pb::AckCommandsRequest::decode(data) {
        for id in &a.command_ids {
            if rules::valid_command_id(id) {
                assert!(id.is_ascii() && id.len() == 36);
            }
        }
    }
    let _ = rules::valid_entity(&String::from_utf8_lossy(data));
    let _ = rules::open_payload(&dek, &header(&subject, "rul_x"), data);
});
