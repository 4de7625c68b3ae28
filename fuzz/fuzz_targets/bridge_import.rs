//! `ImportBridge` messages from the network as the server takes them:
//! protobuf decode, the conversion to records (`api::bridge_batch`), and
//! each record's checks, sealed-identifier opening and blind indexes
//! (`bridge::prepare_record`), under a fixed test key. Random bytes almost
//! never open under the bridge seal key, so the part of the input after a
//! first zero byte is also sealed for this partner, as the partner's own
//! tooling seals it, and added to the first record: that reaches the
//! normalising of opened values. Nothing may panic; a refusal is reported
//! at its record's place and never quotes an identifier value.
#![no_main]
use std::sync::OnceLock;

use idvault_core::SystemRng;
use idvault_core::keys::{KeyHierarchy, StaticKeyProvider};
use idvault_core::secret::RootKey;
use idvault_core::xref::{XrefIndexKey, seal_bridge_identifier};
use idvault_proto::v1::{BridgeIdentifier, IdentifierType as PbType, ImportBridgeRequest};
use idvault_server::api::bridge_batch;
use idvault_server::service::tokens::bridge::{IdValue, prepare_record};
use idvault_tokenizer::IdentifierType;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const OWNER: &str = "spiffe://idvault.test/partner/fuzz";

fn keys() -> &'static (KeyHierarchy, XrefIndexKey) {
    static K: OnceLock<(KeyHierarchy, XrefIndexKey)> = OnceLock::new();
    K.get_or_init(|| {
        let root = RootKey::from_bytes([0x3c; 32], 1);
        let h = KeyHierarchy::new(Box::new(StaticKeyProvider::new([root]).expect("provider")));
        let x = h.xref_index_key(OWNER, 1).expect("index key");
        (h, x)
    })
}

fuzz_target!(|data: &[u8]| {
    let (msg, extra) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(mut batch) = ImportBridgeRequest::decode(msg) else {
        return;
    };
    let (hierarchy, index_key) = keys();
    let mut opened = None;
    if let (Some(text), Some(first)) = (
        extra.and_then(|e| std::str::from_utf8(e).ok()),
        batch.records.first_mut(),
    ) {
        let seal = hierarchy.bridge_seal_key(OWNER, 1).expect("seal key");
        let sealed = seal_bridge_identifier(
            &seal,
            OWNER,
            IdentifierType::Email,
            text,
            &SystemRng::default(),
        )
        .expect("seal");
        opened = Some(text.to_owned());
        first.identifiers.push(BridgeIdentifier {
            r#type: PbType::Email.into(),
            value: String::new(),
            sealed_value: sealed,
        });
    }
    let n = batch.records.len();
    let (records, bad, opts) = bridge_batch(batch);
    assert_eq!(records.len(), n);
    assert!(bad.iter().all(|&i| i < n));
    for (i, r) in records.into_iter().enumerate() {
        // Values that no refusal's wording could contain by chance.
        let values: Vec<String> = r
            .identifiers
            .iter()
            .filter_map(|(_, v)| match v {
                IdValue::Plain(p) if p.contains('@') => Some(p.clone()),
                _ => None,
            })
            .chain(opened.iter().filter(|t| i == 0 && t.contains('@')).cloned())
            .collect();
        let was_bad = bad.contains(&i);
        match prepare_record(OWNER, i, r, &opts, std::slice::from_ref(index_key), &|v| {
            hierarchy.bridge_seal_key(OWNER, v).ok()
        }) {
            Ok(_) => assert!(!was_bad, "a record with a bad identifier was accepted"),
            Err(e) => {
                assert_eq!(e.index, i);
                for v in &values {
                    assert!(!e.reason.contains(v.as_str()), "a refusal quoted a value");
                }
            }
        }
    }
});
