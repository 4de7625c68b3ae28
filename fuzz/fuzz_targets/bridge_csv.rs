//! Identity-bridge CSV files: the header row's column roles and each row
//! built into a record (`idvault bridge import FILE.csv`).
#![no_main]
use idvault_client::bridge_file::CsvLayout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut rows = r.records();
    let Some(Ok(header)) = rows.next() else {
        return;
    };
    let Ok(layout) = CsvLayout::from_header(&header) else {
        return;
    };
    for row in rows.take(64) {
        let Ok(row) = row else { break };
        let _ = layout.record(&row);
    }
});
