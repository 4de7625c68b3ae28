//! Policy files from the operator: arbitrary text as a `.cedar` file (and,
//! separately, as the schema) through parsing, validation and the located
//! diagnostics, then a decision with whatever compiled.
#![no_main]
use idvault_policies::{
    Action, PartnerFacts, PolicyEngine, PolicyFile, PolicySource, RequestContext, Resource, Role,
    compile,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut src = PolicySource::builtin();
    src.policies.push(PolicyFile {
        name: "fuzz.cedar".into(),
        text: text.to_owned(),
    });
    match compile(&src) {
        Ok(c) => {
            let partner = PartnerFacts {
                name: "a".into(),
                spiffe_id: "spiffe://t/partner/a".into(),
                roles: vec![Role::SubjectsWrite],
                token_domains: vec![],
                release_purposes: vec!["kyc".into()],
                release_fields: vec!["email".into()],
            };
            if let Ok(e) = PolicyEngine::new(c, &[partner]) {
                let _ = e.decide(
                    "a",
                    Action::CreateSubject,
                    Resource::Vault,
                    &RequestContext::default(),
                );
            }
        }
        Err(diags) => {
            for d in diags {
                let _ = d.to_string();
            }
        }
    }
    let mut bad_schema = PolicySource::builtin();
    bad_schema.schema.text = text.to_owned();
    let _ = compile(&bad_schema);
});
