//! Dataset files for `idvault partner link FILE`: CSV with a header row
//! and JSON Lines, read into Link records.
#![no_main]
use idvault_client::link_file::{Columns, Format, read_records};
use idvault_proto::v1::LinkOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let columns = Columns {
        id: "record_id".into(),
        fields: [
            ("family_name".to_owned(), "family_name".to_owned()),
            ("surname".to_owned(), "family_name".to_owned()),
            ("dob".to_owned(), "date_of_birth".to_owned()),
        ]
        .into_iter()
        .collect(),
    };
    for format in [Format::Csv, Format::Jsonl] {
        let (mut records, mut options) = (0u64, 0u32);
        let read = read_records(
            data,
            "fuzz",
            format,
            &columns,
            (LinkOptions::default(), 7),
            &mut |_| {},
            &mut |m| {
                records += m.records.len() as u64;
                options += u32::from(m.options.is_some());
                // Every message holds at most its batch size.
                assert!(m.records.len() <= 7);
                true
            },
        );
        // What it says it read is what it sent, and the options went once.
        if let Ok(n) = read {
            assert_eq!(n, records);
            assert_eq!(options, 1);
        }
    }
});
