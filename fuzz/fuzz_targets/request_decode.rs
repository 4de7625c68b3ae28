//! Request bytes from the network: protobuf decode, then the same
//! validation the service applies.
#![no_main]
use idvault_core::subject::{SubjectId, validate_fields};
use idvault_proto::v1::{CreateSubjectRequest, LinkRequest, UpdateSubjectRequest};
use idvault_server::service::matching::LinkJob;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CreateSubjectRequest::decode(data) {
        let _ = validate_fields(m.fields.into_iter().map(|f| (f.name, f.value)));
    }
    if let Ok(m) = UpdateSubjectRequest::decode(data) {
        let _ = SubjectId::parse(&m.subject_id);
        let _ = validate_fields(m.fields.into_iter().map(|f| (f.name, f.value)));
    }
    // A Link stream's message: its options as a job takes them, then each
    // record's fields (the queries are planned as in `match_query`).
    if let Ok(m) = LinkRequest::decode(data) {
        let o = m.options.unwrap_or_default();
        let _ = LinkJob::new(o.one_to_one, o.min_score);
        for r in m.records {
            let _ = validate_fields(r.fields.into_iter().map(|f| (f.name, f.value)));
        }
    }
});
