//! Test helpers shared by the rules submodules' tests: entity ids and a
//! rule builder that goes through the wire conversion.

use idvault_proto::v1 as pb;

use super::Rule;

pub(super) const A: &str = "spiffe://idvault.dev/partner/bank";
pub(super) const B: &str = "spiffe://idvault.dev/partner/telco";
pub(super) const C: &str = "spiffe://idvault.dev/partner/insurer";

/// A rule built through `Rule::from_pb`; panics if it is invalid.
pub(super) fn rule(source: &str, ev: &str, target: &str, cmd: &str, fields: &[&str]) -> Rule {
    Rule::from_pb(pb::Rule {
        rule_id: String::new(),
        source: source.into(),
        event_type: ev.into(),
        target: target.into(),
        command: cmd.into(),
        fields: fields.iter().map(|f| (*f).into()).collect(),
    })
    .unwrap()
}
