//! Encrypted, hash-chained packets: one per version of one PII field.
//!
//! Wire format (all integers big-endian), specified in `docs/packets.md`:
//! ```text
//! header  = "IDVP" ‖ version:u8 (=1) ‖ subject_id:[16] ‖ seq:u64 ‖ time_ms:i64
//!           ‖ key_id:u32 ‖ prev_hash:[32] ‖ name_len:u8 ‖ field_name:[name_len]
//! packet  = header ‖ nonce:[12] ‖ AES-256-GCM(dek, nonce, aad = header, value) (ciphertext ‖ tag)
//! hash    = SHA-256("idvault/v1/packet" ‖ packet)
//! genesis = SHA-256("idvault/v1/genesis" ‖ subject_id)   (prev_hash of seq 1)
//! ```
//! The whole header is the AEAD associated data, so a packet moved to
//! another subject, renumbered, renamed or re-linked no longer decrypts.
//! Each packet names the hash of the one before it, and the subject row
//! stores the hash of the newest, so deletion and truncation are caught too.
//!
//! Parsing works on outside bytes and must never panic or index out of
//! bounds; a value is only ever returned after its packet authenticated.
//! Times come in as parameters; nothing here reads the clock or the store.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::crypto::{self, HASH_LEN, NONCE_LEN, Rng, TAG_LEN};
use super::secret::DataKey;
use super::subject::{FieldName, FieldValue, SubjectId};

/// Packet magic.
pub const MAGIC: &[u8; 4] = b"IDVP";
/// Packet format version.
pub const FORMAT_VERSION: u8 = 1;
const FIXED_HEADER_LEN: usize = 4 + 1 + 16 + 8 + 8 + 4 + HASH_LEN + 1;
const PACKET_HASH_LABEL: &[u8] = b"idvault/v1/packet";
const GENESIS_LABEL: &[u8] = b"idvault/v1/genesis";

/// Errors opening or sealing a packet. No value bytes are ever included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The bytes are not a well-formed packet.
    #[error("malformed packet")]
    Malformed,
    /// AEAD authentication failed.
    #[error("packet failed to decrypt")]
    Decryption,
    /// The decrypted value is not UTF-8.
    #[error("packet value is not UTF-8")]
    NotUtf8,
    /// Packets read as the end of a chain do not link up to its head.
    #[error("packets do not link to the chain head")]
    Unlinked,
    /// A cryptographic primitive failed while sealing.
    #[error("sealing failed: {0}")]
    Seal(crypto::CryptoError),
}

/// The authenticated header of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketHeader {
    /// Owning subject.
    pub subject: SubjectId,
    /// Position in the subject's chain, from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when sealed.
    pub time_ms: i64,
    /// Version of the subject's DEK that sealed it.
    pub key_id: u32,
    /// Hash of packet `seq - 1` (or the genesis hash).
    pub prev_hash: [u8; HASH_LEN],
    /// Which field this packet holds.
    pub field: FieldName,
}

impl PacketHeader {
    /// Encodes the header (the AEAD associated data).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.field.as_str().as_bytes();
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + name.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        // Catalogue names are short ASCII; the catalogue test pins < 256.
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        out
    }
}

/// A sealed packet's bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPacket(Vec<u8>);

impl std::fmt::Debug for SealedPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedPacket({} bytes)", self.0.len())
    }
}

impl SealedPacket {
    /// The packet bytes, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes ownership of the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// This packet's chain hash.
    pub fn hash(&self) -> [u8; HASH_LEN] {
        packet_hash(&self.0)
    }
}

/// A parsed, not yet authenticated, packet.
#[derive(Debug)]
pub struct ParsedPacket<'a> {
    /// The header, decoded.
    pub header: PacketHeader,
    header_bytes: &'a [u8],
    nonce: &'a [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PacketError> {
        if self.0.len() < n {
            return Err(PacketError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PacketError> {
        self.take(N)?.try_into().map_err(|_| PacketError::Malformed)
    }
}

/// Parses packet bytes (untrusted: they come from storage).
pub fn parse(bytes: &[u8]) -> Result<ParsedPacket<'_>, PacketError> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC || r.array::<1>()? != [FORMAT_VERSION] {
        return Err(PacketError::Malformed);
    }
    let subject = SubjectId::from_bytes(r.array()?);
    let seq = u64::from_be_bytes(r.array()?);
    let time_ms = i64::from_be_bytes(r.array()?);
    let key_id = u32::from_be_bytes(r.array()?);
    let prev_hash = r.array()?;
    let [name_len] = r.array::<1>()?;
    let name =
        std::str::from_utf8(r.take(usize::from(name_len))?).map_err(|_| PacketError::Malformed)?;
    let field = FieldName::parse(name).map_err(|_| PacketError::Malformed)?;
    let header_len = bytes.len() - r.0.len();
    let header_bytes = bytes.get(..header_len).ok_or(PacketError::Malformed)?;
    let nonce: &[u8; NONCE_LEN] = r
        .take(NONCE_LEN)?
        .try_into()
        .map_err(|_| PacketError::Malformed)?;
    if r.0.len() < TAG_LEN {
        return Err(PacketError::Malformed);
    }
    Ok(ParsedPacket {
        header: PacketHeader {
            subject,
            seq,
            time_ms,
            key_id,
            prev_hash,
            field,
        },
        header_bytes,
        nonce,
        ciphertext: r.0,
    })
}

impl ParsedPacket<'_> {
    /// Authenticates and decrypts the value.
    pub fn open(&self, dek: &DataKey) -> Result<FieldValue, PacketError> {
        let pt = crypto::aead_open(dek.expose(), self.nonce, self.header_bytes, self.ciphertext)
            .map_err(|_| PacketError::Decryption)?;
        let s = String::from_utf8(pt.to_vec()).map_err(|_| PacketError::NotUtf8)?;
        Ok(FieldValue::from_trusted(Zeroizing::new(s)))
    }
}

/// Seals `value` under `dek` with `header` as associated data.
pub fn seal(
    dek: &DataKey,
    header: &PacketHeader,
    value: &FieldValue,
    rng: &dyn Rng,
) -> Result<SealedPacket, PacketError> {
    let hdr = header.encode();
    let nonce = crypto::random_nonce(rng).map_err(PacketError::Seal)?;
    let ct = crypto::aead_seal(dek.expose(), &nonce, &hdr, value.expose().as_bytes())
        .map_err(PacketError::Seal)?;
    let mut out = hdr;
    out.reserve(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(SealedPacket(out))
}

/// Chain hash of packet bytes.
pub fn packet_hash(bytes: &[u8]) -> [u8; HASH_LEN] {
    crypto::sha256(&[PACKET_HASH_LABEL, bytes])
}

/// The `prev_hash` of a subject's first packet.
pub fn genesis_hash(subject: &SubjectId) -> [u8; HASH_LEN] {
    crypto::sha256(&[GENESIS_LABEL, subject.as_bytes()])
}

/// Where a subject's chain stands: packet count and newest hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of packets (= sequence number of the newest).
    pub seq: u64,
    /// Hash of the newest packet (genesis hash when empty).
    pub hash: [u8; HASH_LEN],
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis(subject: &SubjectId) -> Self {
        Self {
            seq: 0,
            hash: genesis_hash(subject),
        }
    }
}

/// One packet ready to store.
#[derive(Debug, Clone)]
pub struct NewPacket {
    /// Its sequence number.
    pub seq: u64,
    /// Its field.
    pub field: FieldName,
    /// Its bytes.
    pub packet: SealedPacket,
}

/// Most packets one subject's chain may hold. Every update appends (up to
/// a dozen fields of up to 4 KiB each), so an unbounded chain would make
/// every full read of a subject (its verification, a re-index) grow
/// without end; past this the vault refuses the update.
pub const MAX_CHAIN_PACKETS: u64 = 10_000;

/// The longest packet [`seal`] makes: the header with a field name of 255
/// bytes, the nonce, a value of [`MAX_VALUE_BYTES`](crate::subject::MAX_VALUE_BYTES)
/// and the tag. A stored one longer than this was not written by the vault.
pub const MAX_PACKET_LEN: usize =
    FIXED_HEADER_LEN + 255 + NONCE_LEN + crate::subject::MAX_VALUE_BYTES + TAG_LEN;

/// Seals `fields` as the next packets of the chain at `head`.
/// Returns the packets and the new head. Pure: nothing is stored.
pub fn append(
    subject: &SubjectId,
    dek: &DataKey,
    head: ChainHead,
    fields: &[(FieldName, FieldValue)],
    time_ms: i64,
    rng: &dyn Rng,
) -> Result<(Vec<NewPacket>, ChainHead), PacketError> {
    let mut head = head;
    let mut out = Vec::with_capacity(fields.len());
    for (field, value) in fields {
        let header = PacketHeader {
            subject: *subject,
            seq: head.seq.checked_add(1).ok_or(PacketError::Malformed)?,
            time_ms,
            key_id: dek.version(),
            prev_hash: head.hash,
            field: *field,
        };
        let packet = seal(dek, &header, value, rng)?;
        head = ChainHead {
            seq: header.seq,
            hash: packet.hash(),
        };
        out.push(NewPacket {
            seq: header.seq,
            field: *field,
            packet,
        });
    }
    Ok((out, head))
}

/// Why a chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Exhaustive on purpose: the API maps every variant to the wire, and a
// new one must not compile until it is mapped.
pub enum BreakReason {
    /// Stored bytes are not a packet.
    Malformed,
    /// The header names another subject.
    WrongSubject,
    /// A sequence number is missing or out of place.
    SequenceGap,
    /// `prev_hash` does not match the previous packet.
    PreviousHashMismatch,
    /// AEAD authentication failed.
    DecryptionFailed,
    /// The newest packet is not the stored head.
    HeadMismatch,
}

impl BreakReason {
    /// Stable snake_case name, used in audit details.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongSubject => "wrong_subject",
            Self::SequenceGap => "sequence_gap",
            Self::PreviousHashMismatch => "previous_hash_mismatch",
            Self::DecryptionFailed => "decryption_failed",
            Self::HeadMismatch => "head_mismatch",
        }
    }
}

/// Outcome of [`verify_chain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    /// Packets examined.
    pub checked: u64,
    /// The first broken link: sequence number and reason.
    pub first_break: Option<(u64, BreakReason)>,
}

impl ChainReport {
    /// True when nothing is broken.
    pub fn intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Verifies a subject's stored packets, given as `(stored_seq, bytes)` in
/// ascending `stored_seq`, against the stored head. Decrypts every packet.
pub fn verify_chain<'a>(
    subject: &SubjectId,
    dek: &DataKey,
    stored: impl IntoIterator<Item = (u64, &'a [u8])>,
    head: ChainHead,
) -> ChainReport {
    let mut v = ChainVerifier::new(subject, dek);
    for (stored_seq, bytes) in stored {
        if !v.push(stored_seq, bytes) {
            break;
        }
    }
    v.finish(head)
}

/// [`verify_chain`] one packet at a time, so that a history of up to
/// [`MAX_CHAIN_PACKETS`] can be read and checked a page at a time instead
/// of being held in memory whole.
pub struct ChainVerifier<'k> {
    subject: SubjectId,
    dek: &'k DataKey,
    prev: [u8; 32],
    checked: u64,
    broken: Option<(u64, BreakReason)>,
}

impl std::fmt::Debug for ChainVerifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainVerifier")
            .field("checked", &self.checked)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'k> ChainVerifier<'k> {
    /// A verifier of `subject`'s chain from its genesis.
    pub fn new(subject: &SubjectId, dek: &'k DataKey) -> Self {
        Self {
            subject: *subject,
            dek,
            prev: genesis_hash(subject),
            checked: 0,
            broken: None,
        }
    }

    /// Checks the next stored packet (`stored_seq` ascending); false once
    /// the chain is broken, after which further packets are ignored (the
    /// report names the first break).
    pub fn push(&mut self, stored_seq: u64, bytes: &[u8]) -> bool {
        self.check(stored_seq, None, bytes)
    }

    /// [`ChainVerifier::push`] of a stored row that also names the packet's
    /// field in a column of its own (the store selects a field's newest
    /// packet by it): a row whose column is not the field its
    /// authenticated header names is `Malformed`. Otherwise a database
    /// writer could relabel a field's newest packet as another field and
    /// have the older value served as the newest, unseen by the chain.
    pub fn push_labelled(&mut self, stored_seq: u64, field: &str, bytes: &[u8]) -> bool {
        self.check(stored_seq, Some(field), bytes)
    }

    fn check(&mut self, stored_seq: u64, field: Option<&str>, bytes: &[u8]) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let expected = self.checked + 1;
        let reason = match parse(bytes) {
            Err(_) => Some(BreakReason::Malformed),
            Ok(p) if field.is_some_and(|f| f != p.header.field.as_str()) => {
                Some(BreakReason::Malformed)
            }
            Ok(p) if p.header.subject != self.subject => Some(BreakReason::WrongSubject),
            Ok(p) if stored_seq != expected || p.header.seq != expected => {
                Some(BreakReason::SequenceGap)
            }
            Ok(p) if !crypto::ct_eq(&p.header.prev_hash, &self.prev) => {
                Some(BreakReason::PreviousHashMismatch)
            }
            Ok(p) if p.open(self.dek).is_err() => Some(BreakReason::DecryptionFailed),
            Ok(_) => None,
        };
        if let Some(r) = reason {
            self.broken = Some((expected.min(stored_seq.max(1)), r));
            return false;
        }
        self.prev = packet_hash(bytes);
        self.checked = expected;
        true
    }

    /// The report, the last packet checked against the stored `head`.
    pub fn finish(self, head: ChainHead) -> ChainReport {
        if self.broken.is_some() {
            return ChainReport {
                checked: self.checked,
                first_break: self.broken,
            };
        }
        if self.checked != head.seq || !crypto::ct_eq(&self.prev, &head.hash) {
            return ChainReport {
                checked: self.checked,
                first_break: Some((self.checked + 1, BreakReason::HeadMismatch)),
            };
        }
        ChainReport {
            checked: self.checked,
            first_break: None,
        }
    }
}

/// The newest value of each field (reads return the latest version).
/// Fails on the first packet that does not open or belongs elsewhere.
pub fn newest_values<'a>(
    subject: &SubjectId,
    dek: &DataKey,
    stored: impl IntoIterator<Item = &'a [u8]>,
) -> Result<BTreeMap<FieldName, FieldValue>, PacketError> {
    // Headers first (cheap, and authenticated by the open below), then
    // only the newest packet of each field is decrypted: the cost is the
    // number of fields, not the length of the history.
    let mut newest: BTreeMap<FieldName, ParsedPacket<'a>> = BTreeMap::new();
    for bytes in stored {
        let p = parse(bytes)?;
        if p.header.subject != *subject {
            return Err(PacketError::Malformed);
        }
        match newest.get(&p.header.field) {
            Some(q) if q.header.seq > p.header.seq => {}
            _ => {
                newest.insert(p.header.field, p);
            }
        }
    }
    newest
        .into_iter()
        .map(|(field, p)| Ok((field, p.open(dek)?)))
        .collect()
}

/// The newest value of each field, read from the end of a subject's chain:
/// `stored` must be consecutive packets, ascending by sequence, whose last
/// is the packet `head` names, each linked to the one before it. Inside
/// that authenticated run every packet is known, so the newest of each
/// field it holds is decided by the packets' own headers, never by a
/// stored column.
///
/// This guards what leaves the vault (a release, a digital ID) against a
/// database writer without the keys: [`newest_values`] trusts the rows it
/// is handed to be the newest of each field, so hiding a field's newest
/// packet (deleting the row, or renaming its `field_name` column) would
/// make it return the value before, with the chain head unchanged. Here
/// a missing row breaks the run and a renamed one changes nothing. A
/// field with no packet in the run is left out, as if never set: the
/// caller chooses where the run starts (at the oldest of the fields'
/// newest packets by the column, which a writer can only move later by
/// hiding every packet of a field, so a field is at worst withheld,
/// never answered with an older value).
///
/// Each row comes with the field name the store keeps beside it (the
/// column the run's start was chosen by): a row of the run whose column
/// is not the field its header names is `Malformed`, as in
/// [`ChainVerifier::push_labelled`], so a relabelling inside the run fails
/// closed rather than withholding the field it pointed away from.
///
/// Fails with [`PacketError::Unlinked`] when the packets do not form such
/// a run, and as [`newest_values`] on a packet that does not open. An
/// empty `stored` is the answer for an empty chain only.
pub fn newest_values_to_head<'a>(
    subject: &SubjectId,
    dek: &DataKey,
    head: ChainHead,
    stored: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<BTreeMap<FieldName, FieldValue>, PacketError> {
    newest_in_run(subject, dek, None, head, stored)
}

/// [`newest_values_to_head`] of the packets written after `from`, an
/// earlier head of the same chain: the run must start right after it
/// (its first packet's sequence `from.seq + 1`, linked to `from.hash`)
/// and end at `head`; an empty run is the answer only when `head` is
/// `from`. What changed since values were read at `from`: a later value
/// of a field replaces the one read then, the others stand.
pub fn newest_values_since<'a>(
    subject: &SubjectId,
    dek: &DataKey,
    from: ChainHead,
    head: ChainHead,
    stored: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<BTreeMap<FieldName, FieldValue>, PacketError> {
    newest_in_run(subject, dek, Some(from), head, stored)
}

fn newest_in_run<'a>(
    subject: &SubjectId,
    dek: &DataKey,
    from: Option<ChainHead>,
    head: ChainHead,
    stored: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<BTreeMap<FieldName, FieldValue>, PacketError> {
    let mut newest: BTreeMap<FieldName, ParsedPacket<'a>> = BTreeMap::new();
    // The previous packet's sequence and hash, once there is one.
    let mut last: Option<(u64, [u8; HASH_LEN])> = from.map(|f| (f.seq, f.hash));
    for (label, bytes) in stored {
        let p = parse(bytes)?;
        if p.header.subject != *subject || p.header.field.as_str() != label {
            return Err(PacketError::Malformed);
        }
        if let Some((seq, hash)) = last
            && (seq.checked_add(1) != Some(p.header.seq) || p.header.prev_hash != hash)
        {
            return Err(PacketError::Unlinked);
        }
        last = Some((p.header.seq, packet_hash(bytes)));
        // Ascending and consecutive: a later packet of a field replaces
        // the earlier one.
        newest.insert(p.header.field, p);
    }
    match last {
        Some((seq, hash)) if seq == head.seq && crypto::ct_eq(&hash, &head.hash) => {}
        None if head.seq == 0 => {}
        _ => return Err(PacketError::Unlinked),
    }
    newest
        .into_iter()
        .map(|(field, p)| Ok((field, p.open(dek)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemRng;
    use crate::keys::generate_dek;
    use proptest::prelude::Strategy;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(FieldName, FieldValue)> {
        crate::subject::validate_fields(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        )
        .unwrap()
    }

    fn chain(n_updates: usize) -> (SubjectId, DataKey, Vec<Vec<u8>>, ChainHead) {
        let rng = SystemRng::default();
        let s = SubjectId::generate(&rng).unwrap();
        let dek = generate_dek(&rng).unwrap();
        let mut head = ChainHead::genesis(&s);
        let mut all = Vec::new();
        let (p, h) = append(
            &s,
            &dek,
            head,
            &fields(&[("given_name", "Ada"), ("city", "London")]),
            1,
            &rng,
        )
        .unwrap();
        all.extend(p);
        head = h;
        for i in 0..n_updates {
            let (p, h) = append(
                &s,
                &dek,
                head,
                &fields(&[("city", &format!("City{i}"))]),
                2,
                &rng,
            )
            .unwrap();
            all.extend(p);
            head = h;
        }
        (
            s,
            dek,
            all.into_iter().map(|p| p.packet.into_bytes()).collect(),
            head,
        )
    }

    fn verify(s: &SubjectId, dek: &DataKey, pk: &[Vec<u8>], head: ChainHead) -> ChainReport {
        verify_chain(
            s,
            dek,
            pk.iter()
                .enumerate()
                .map(|(i, b)| (i as u64 + 1, b.as_slice())),
            head,
        )
    }

    #[test]
    fn catalogue_names_fit_the_length_byte() {
        assert!(crate::subject::FIELD_CATALOGUE.iter().all(|n| n.len() < 64));
    }

    #[test]
    fn intact_chain_verifies_and_reads_newest() {
        let (s, dek, pk, head) = chain(3);
        let r = verify(&s, &dek, &pk, head);
        assert_eq!(
            r,
            ChainReport {
                checked: 5,
                first_break: None
            }
        );
        let vals = newest_values(&s, &dek, pk.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(vals[&FieldName::parse("city").unwrap()].expose(), "City2");
        assert_eq!(
            vals[&FieldName::parse("given_name").unwrap()].expose(),
            "Ada"
        );
    }

    /// Reads the run `from..=head.seq` of `pk` (1-based sequences).
    fn to_head(
        s: &SubjectId,
        dek: &DataKey,
        head: ChainHead,
        run: &[&[u8]],
    ) -> Result<Vec<(String, String)>, PacketError> {
        let labelled = run.iter().map(|b| {
            let field = parse(b).map_or("", |p| p.header.field.as_str());
            (field, *b)
        });
        Ok(newest_values_to_head(s, dek, head, labelled)?
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.expose().to_owned()))
            .collect())
    }

    #[test]
    fn a_run_to_the_head_reads_the_newest_of_each_field() {
        // Packets: 1 given_name, 2 city, then cities 3, 4, 5.
        let (s, dek, pk, head) = chain(3);
        let all: Vec<&[u8]> = pk.iter().map(Vec::as_slice).collect();
        let want = vec![
            ("city".to_owned(), "City2".to_owned()),
            ("given_name".to_owned(), "Ada".to_owned()),
        ];
        assert_eq!(to_head(&s, &dek, head, &all).unwrap(), want);
        // A run that starts later holds only what it holds.
        assert_eq!(
            to_head(&s, &dek, head, &all[3..]).unwrap(),
            vec![("city".to_owned(), "City2".to_owned())]
        );
        // An empty chain reads as nothing; an empty run of a non-empty
        // chain does not read at all.
        assert!(
            to_head(&s, &dek, ChainHead::genesis(&s), &[])
                .unwrap()
                .is_empty()
        );
        assert_eq!(to_head(&s, &dek, head, &[]), Err(PacketError::Unlinked));
    }

    /// What a database writer could do to have an older value read
    /// without moving the head: drop the newest packet of a field, or
    /// hand over the rows out of order or short of the head.
    #[test]
    fn a_run_that_does_not_link_to_the_head_is_refused() {
        let (s, dek, pk, head) = chain(3);
        let all: Vec<&[u8]> = pk.iter().map(Vec::as_slice).collect();
        // The newest city (packet 5) hidden.
        assert_eq!(
            to_head(&s, &dek, head, &all[..4]),
            Err(PacketError::Unlinked)
        );
        // A middle city (packet 4) hidden.
        let gap = [all[0], all[1], all[2], all[4]];
        assert_eq!(to_head(&s, &dek, head, &gap), Err(PacketError::Unlinked));
        // Reordered.
        let swapped = [all[0], all[1], all[3], all[2], all[4]];
        assert_eq!(
            to_head(&s, &dek, head, &swapped),
            Err(PacketError::Unlinked)
        );
        // A packet replaced by another subject's, or a head from elsewhere.
        let (_, _, other, other_head) = chain(3);
        let mixed = [all[0], all[1], all[2], all[3], other[4].as_slice()];
        assert_eq!(to_head(&s, &dek, head, &mixed), Err(PacketError::Malformed));
        assert_eq!(
            to_head(&s, &dek, other_head, &all),
            Err(PacketError::Unlinked)
        );
        // A packet of the run stored under another field's name.
        let labelled = all.iter().enumerate().map(|(i, b)| {
            let field = if i == 4 {
                "given_name"
            } else {
                parse(b).unwrap().header.field.as_str()
            };
            (field, *b)
        });
        assert_eq!(
            newest_values_to_head(&s, &dek, head, labelled).map(|_| ()),
            Err(PacketError::Malformed)
        );
        // The head's own packet with a flipped byte no longer hashes to it.
        let mut last = pk[4].clone();
        let n = last.len() - 1;
        last[n] ^= 1;
        let edited = [all[0], all[1], all[2], all[3], last.as_slice()];
        assert_eq!(to_head(&s, &dek, head, &edited), Err(PacketError::Unlinked));
    }

    /// What changed after an earlier head: read from right after it.
    #[test]
    fn a_run_since_an_earlier_head_reads_what_changed() {
        // Packets: 1 given_name, 2 city, then cities 3, 4, 5.
        let (s, dek, pk, head) = chain(3);
        let all: Vec<&[u8]> = pk.iter().map(Vec::as_slice).collect();
        let labelled = |run: &[&'_ [u8]]| -> Vec<(&'static str, Vec<u8>)> {
            run.iter()
                .map(|b| (parse(b).unwrap().header.field.as_str(), b.to_vec()))
                .collect()
        };
        let at = |n: usize| ChainHead {
            seq: n as u64,
            hash: packet_hash(all[n - 1]),
        };
        let since = |from: ChainHead, run: &[&[u8]]| {
            let rows = labelled(run);
            newest_values_since(
                &s,
                &dek,
                from,
                head,
                rows.iter().map(|(f, b)| (*f, b.as_slice())),
            )
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.expose().to_owned()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            since(at(3), &all[3..]).unwrap(),
            vec![("city".to_owned(), "City2".to_owned())]
        );
        assert!(since(head, &[]).unwrap().is_empty());
        // Not starting right after `from`, or short of the head.
        assert_eq!(since(at(2), &all[3..]), Err(PacketError::Unlinked));
        assert_eq!(since(at(3), &all[3..4]), Err(PacketError::Unlinked));
        assert_eq!(since(at(3), &[]), Err(PacketError::Unlinked));
        // A `from` that is not this chain's: another length, or this
        // length with another hash (a fork), also with nothing since.
        let (_, _, _, other) = chain(2);
        assert_eq!(since(other, &all[3..]), Err(PacketError::Unlinked));
        let fork = ChainHead {
            seq: 3,
            hash: [0xab; HASH_LEN],
        };
        assert_eq!(since(fork, &all[3..]), Err(PacketError::Unlinked));
        let forked_head = ChainHead {
            seq: head.seq,
            hash: [0xab; HASH_LEN],
        };
        assert_eq!(since(forked_head, &[]), Err(PacketError::Unlinked));
    }

    #[test]
    fn flipped_ciphertext_byte_is_named() {
        let (s, dek, mut pk, head) = chain(2);
        let last = pk[2].len() - 1;
        pk[2][last] ^= 0x01;
        assert_eq!(
            verify(&s, &dek, &pk, head).first_break,
            Some((3, BreakReason::DecryptionFailed))
        );
    }

    #[test]
    fn deleted_middle_packet_is_named() {
        let (s, dek, mut pk, head) = chain(2);
        pk.remove(1);
        // Stored rows keep their sequence numbers: 1, 3, 4.
        let rows: Vec<(u64, &[u8])> = vec![(1, &pk[0]), (3, &pk[1]), (4, &pk[2])];
        let r = verify_chain(&s, &dek, rows, head);
        assert_eq!(r.first_break, Some((2, BreakReason::SequenceGap)));
    }

    #[test]
    fn packet_from_another_subject_is_named() {
        let (s, dek, mut pk, head) = chain(1);
        let (_, _, other, _) = chain(1);
        pk[1] = other[1].clone();
        assert_eq!(
            verify(&s, &dek, &pk, head).first_break,
            Some((2, BreakReason::WrongSubject))
        );
    }

    #[test]
    fn truncation_is_named() {
        let (s, dek, mut pk, head) = chain(2);
        pk.pop();
        assert_eq!(
            verify(&s, &dek, &pk, head).first_break,
            Some((4, BreakReason::HeadMismatch))
        );
    }

    #[test]
    fn header_edits_fail_to_decrypt_or_link() {
        let (s, dek, pk, head) = chain(0);
        // Any one-bit change anywhere in any packet is detected.
        for i in 0..pk.len() {
            for byte in 0..pk[i].len() {
                let mut t = pk.clone();
                t[i][byte] ^= 0x80;
                assert!(
                    !verify(&s, &dek, &t, head).intact(),
                    "packet {i} byte {byte}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_value_round_trips_and_any_bit_flip_fails(
            value in "[^\\p{Cc}]{1,200}".prop_filter("not blank", |v| !v.trim().is_empty()),
            bit in 0usize..4096,
        ) {
            let rng = SystemRng::default();
            let s = SubjectId::generate(&rng).unwrap();
            let dek = generate_dek(&rng).unwrap();
            let f = fields(&[("street_address", &value)]);
            let (p, head) = append(&s, &dek, ChainHead::genesis(&s), &f, 42, &rng).unwrap();
            let bytes = p[0].packet.as_bytes().to_vec();
            let opened = parse(&bytes).unwrap().open(&dek).unwrap();
            proptest::prop_assert_eq!(opened.expose(), value.as_str());
            let mut t = bytes.clone();
            let i = bit % (t.len() * 8);
            t[i / 8] ^= 1 << (i % 8);
            let report = verify_chain(&s, &dek, [(1, t.as_slice())], head);
            proptest::prop_assert!(!report.intact());
        }
    }

    #[test]
    fn parse_rejects_truncations() {
        let (_, _, pk, _) = chain(0);
        for n in 0..pk[0].len() {
            let r = parse(&pk[0][..n]);
            assert!(r.is_err() || n >= pk[0].len() - TAG_LEN, "len {n}");
        }
    }
}
