//! Deletion journal lines as `idvault restore` reads them from a file an
//! attacker may have written: parsed, then authenticated under a fixed
//! test key. Nothing may panic; a line that parses must be the canonical
//! spelling of its entry, and a line this key did not write (without its
//! MAC) is never accepted. The same bytes are also read as a whole
//! journal file (`read_journal_from`: line framing, over-long lines, a
//! torn last line), where every line is accounted for once.
#![no_main]
use std::sync::OnceLock;

use idvault_core::keys::{KeyHierarchy, StaticKeyProvider};
use idvault_core::secret::RootKey;
use idvault_core::shred::{ShredEntry, parse};
use idvault_server::shredlog::{JournalRead, read_journal_from};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static KeyHierarchy {
    static K: OnceLock<KeyHierarchy> = OnceLock::new();
    K.get_or_init(|| {
        let root = RootKey::from_bytes([0x5a; 32], 1);
        KeyHierarchy::new(Box::new(StaticKeyProvider::new([root]).expect("provider")))
    })
}

fuzz_target!(|data: &[u8]| {
    // A small buffer, so lines cross buffer refills.
    let mut r = std::io::BufReader::with_capacity(16, data);
    let mut read = JournalRead::default();
    read_journal_from(&mut r, "journal", keys(), &mut read).expect("reading from memory");
    let lines = data.split(|&b| b == b'\n').count() - usize::from(data.ends_with(b"\n"));
    // Every line ends accepted, refused or torn, exactly once.
    let seen = read.lines + read.torn_tail + read.refused.len() as u64;
    if !data.is_empty() {
        assert_eq!(
            seen, lines as u64,
            "lines accounted for against lines in the file"
        );
    }
    assert!(read.torn_tail <= 1);
    assert_eq!(read.leaves.len() as u64, read.lines);
    assert!(read.refused.iter().all(|r| r.starts_with("journal:")));

    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((entry, version, body, _mac)) = parse(line) {
        assert!(line.starts_with(body));
        // Re-written under the key, the same entry gives the same body.
        if version == 1 {
            let again = entry.to_line(keys()).expect("line");
            assert!(again.starts_with(body));
        }
    }
    if let Ok(e) = ShredEntry::from_line(line, keys()) {
        // Accepted only if it is exactly what the key writes.
        assert_eq!(e.to_line(keys()).expect("line").trim_end(), line);
    }
});
