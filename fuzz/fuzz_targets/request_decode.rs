//! Request bytes from the network: protobuf decode, then the same
//! validation the service applies.
#![no_main]
use idvault_core::subject::{SubjectId, validate_fields};
use idvault_proto::v1::{CreateSubjectRequest, UpdateSubjectRequest};
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
});
