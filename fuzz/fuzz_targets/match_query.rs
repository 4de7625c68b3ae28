//! Match requests from the network: protobuf decode, then the validation
//! and query planning the service applies (variants, probes, information
//! threshold), under a fixed test key.
#![no_main]
use std::sync::{Arc, OnceLock};

use idvault_core::keys::{KeyHierarchy, StaticKeyProvider};
use idvault_core::matching::MatchKeyring;
use idvault_core::secret::RootKey;
use idvault_proto::v1::{MatchBatchRequest, MatchRequest};
use idvault_server::service::matching::{MatchQuery, check_query};
use idvault_tokenizer::NormalizeOptions;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn ring() -> &'static [Arc<MatchKeyring>] {
    static RING: OnceLock<Vec<Arc<MatchKeyring>>> = OnceLock::new();
    RING.get_or_init(|| {
        let provider = StaticKeyProvider::new([RootKey::from_bytes([7; 32], 1)]).expect("key");
        let keys = KeyHierarchy::new(Box::new(provider));
        vec![Arc::new(
            MatchKeyring::derive(&keys, "fuzz", 1).expect("ring"),
        )]
    })
}

fn check(q: idvault_proto::v1::MatchQuery) {
    let q = MatchQuery {
        fields: q.fields.into_iter().map(|f| (f.name, f.value)).collect(),
        max_results: q.max_results,
        min_score: q.min_score,
        query_id: q.query_id,
    };
    let opts = NormalizeOptions {
        default_country_code: Some(44),
    };
    let _ = check_query(q, ring(), &opts);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = MatchRequest::decode(data)
        && let Some(q) = m.query
    {
        check(q);
    }
    if let Ok(m) = MatchBatchRequest::decode(data) {
        m.queries.into_iter().take(4).for_each(check);
    }
});
