//! Events and rules from the network: a decoded PublishEventRequest
//! validated and run through a fixed rule set (a command never carries a
//! field its rule does not name), its fields sealed and opened again,
//! SetRules and AckCommandsRequest decoded and validated, and arbitrary
//! bytes opened as a sealed command payload.
#![no_main]
use idvault::core::rules::{self, Rule};
use idvault::core::secret::DataKey;
use idvault::core::subject::SubjectId;
use idvault_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const A: &str = "spiffe://idvault.dev/partner/partner-a";
const B: &str = "spiffe://idvault.dev/partner/partner-b";

/// A fixed RNG: the target checks parsing and field selection, not nonces.
struct Fixed;
impl idvault::core::Rng for Fixed {
    fn fill(&self, out: &mut [u8]) -> Result<(), idvault::core::crypto::CryptoError> {
        out.fill(7);
        Ok(())
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
        && let Ok(ev) = rules::validate_event(r.event_type, r.event_id, r.fields)
    {
        let set = rule_set();
        for hit in rules::triggered(&set, A, &ev) {
            assert!(hit.fields.iter().all(|(n, _)| hit.rule.fields.contains(n)));
            let sealed = rules::seal_payload(&dek, "cmd_x", "partner-b", &subject, &hit.fields, &Fixed)
                .expect("seal");
            let opened = rules::open_payload(&dek, "cmd_x", "partner-b", &subject, &sealed)
                .expect("open");
            assert_eq!(opened, hit.fields);
        }
    }
    if let Ok(s) = pb::SetRules::decode(data)
        && let Ok(set) = rules::rule_set(s.rules)
    {
        for r in &set {
            assert_eq!(Rule::from_pb(r.to_pb()).as_ref(), Ok(r));
        }
    }
    if let Ok(a) = pb::AckCommandsRequest::decode(data) {
        let _ = a.command_ids.len();
    }
    let _ = rules::open_payload(&dek, "cmd_x", "partner-b", &subject, data);
});
