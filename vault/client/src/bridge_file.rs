//! Identity-bridge files for `idvault bridge import`: JSON Lines or CSV.
//!
//! JSON Lines, one customer per line; identifier keys are the identifier
//! types, each a string or an array of strings:
//! ```text
//! {"record_id":"r1","msisdn":"+447700900001","account":["AC-1","AC-9"],"email":"a@example.org",
//!  "service":"tv-9","customer_location":"LON-01","address_location":"LON-02"}
//! ```
//! Identifiers sealed with the bridge key (`idvault bridge seal`) go under
//! `"sealed"`, base64-encoded: `{"record_id":"r1","sealed":{"msisdn":"AAAAAQ…"}}`.
//!
//! CSV: a header naming the same columns (type columns may repeat; sealed
//! ones are `sealed.msisdn` etc.); empty cells are skipped. Unknown keys or
//! columns are refused, so a misspelt column cannot silently drop
//! identifiers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use idvault_proto::v1::{BridgeIdentifier, BridgeRecord, IdentifierType as PbType};
use serde::Deserialize;

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line.
    pub line: u64,
    /// Why (never the values).
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Sealed {
    msisdn: Option<OneOrMany>,
    email: Option<OneOrMany>,
    account: Option<OneOrMany>,
    service: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    #[serde(default)]
    sealed: Option<Sealed>,
    #[serde(default)]
    record_id: String,
    msisdn: Option<OneOrMany>,
    email: Option<OneOrMany>,
    account: Option<OneOrMany>,
    service: Option<OneOrMany>,
    #[serde(default)]
    customer_location: String,
    #[serde(default)]
    address_location: String,
}

fn column_type(name: &str) -> Option<PbType> {
    match name {
        "msisdn" => Some(PbType::Msisdn),
        "email" => Some(PbType::Email),
        "account" => Some(PbType::Account),
        "service" => Some(PbType::Service),
        _ => None,
    }
}

fn ids(ty: PbType, values: Option<OneOrMany>, out: &mut Vec<BridgeIdentifier>) {
    for value in values.map(OneOrMany::into_vec).unwrap_or_default() {
        out.push(BridgeIdentifier {
            r#type: ty.into(),
            value,
            sealed_value: Vec::new(),
        });
    }
}

fn sealed_ids(
    ty: PbType,
    values: Option<OneOrMany>,
    out: &mut Vec<BridgeIdentifier>,
) -> Result<(), String> {
    for v in values.map(OneOrMany::into_vec).unwrap_or_default() {
        let sealed_value = B64
            .decode(v.trim())
            .map_err(|_| format!("sealed {} is not base64", ty.as_str_name()))?;
        out.push(BridgeIdentifier {
            r#type: ty.into(),
            value: String::new(),
            sealed_value,
        });
    }
    Ok(())
}

/// Parses one JSON Lines record.
pub fn parse_json_line(line: &str) -> Result<BridgeRecord, String> {
    let r: JsonRecord = serde_json::from_str(line).map_err(|e| {
        // serde_json names the key and position, never the value.
        format!(
            "malformed record at column {}: {}",
            e.column(),
            e.classify_reason()
        )
    })?;
    let mut identifiers = Vec::new();
    ids(PbType::Msisdn, r.msisdn, &mut identifiers);
    ids(PbType::Email, r.email, &mut identifiers);
    ids(PbType::Account, r.account, &mut identifiers);
    ids(PbType::Service, r.service, &mut identifiers);
    let sealed = r.sealed.unwrap_or_default();
    sealed_ids(PbType::Msisdn, sealed.msisdn, &mut identifiers)?;
    sealed_ids(PbType::Email, sealed.email, &mut identifiers)?;
    sealed_ids(PbType::Account, sealed.account, &mut identifiers)?;
    sealed_ids(PbType::Service, sealed.service, &mut identifiers)?;
    Ok(BridgeRecord {
        record_id: r.record_id,
        identifiers,
        customer_location: r.customer_location,
        address_location: r.address_location,
    })
}

trait Classify {
    fn classify_reason(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_reason(&self) -> &'static str {
        let msg = self.to_string();
        if msg.contains("unknown field") {
            "unknown key (use record_id, msisdn, email, account, service, sealed, customer_location, address_location)"
        } else if self.is_syntax() || self.is_eof() {
            "not valid JSON"
        } else {
            "a key has the wrong type (expected a string or an array of strings)"
        }
    }
}

/// Column roles of a CSV bridge file.
#[derive(Debug, Clone)]
pub struct CsvLayout {
    roles: Vec<Role>,
}

#[derive(Debug, Clone, Copy)]
enum Role {
    RecordId,
    Id(PbType),
    SealedId(PbType),
    CustomerLocation,
    AddressLocation,
}

/// The longest bridge CSV header, in bytes (its fields, separators
/// aside), as docs/tokenize.md states.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The widest bridge CSV header, in columns.
pub const MAX_HEADER_COLUMNS: usize = 4_096;

impl CsvLayout {
    /// Reads the header row.
    pub fn from_header(header: &csv::StringRecord) -> Result<Self, String> {
        if header.as_byte_record().as_slice().len() > MAX_HEADER_BYTES
            || header.len() > MAX_HEADER_COLUMNS
        {
            return Err(format!(
                "the header is longer than {MAX_HEADER_BYTES} bytes or wider than \
                 {MAX_HEADER_COLUMNS} columns"
            ));
        }
        let roles = header
            .iter()
            .map(|h| match h.trim() {
                "record_id" => Ok(Role::RecordId),
                "customer_location" => Ok(Role::CustomerLocation),
                "address_location" => Ok(Role::AddressLocation),
                other => match other.strip_prefix("sealed.") {
                    Some(t) => column_type(t).map(Role::SealedId),
                    None => column_type(other).map(Role::Id),
                }
                .ok_or_else(|| format!("unknown column '{other}'")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roles })
    }

    /// Builds a record from a CSV row.
    pub fn record(&self, row: &csv::StringRecord) -> Result<BridgeRecord, String> {
        if row.len() != self.roles.len() {
            return Err(format!(
                "expected {} columns, found {}",
                self.roles.len(),
                row.len()
            ));
        }
        let mut r = BridgeRecord::default();
        for (role, cell) in self.roles.iter().zip(row.iter()) {
            if cell.is_empty() {
                continue;
            }
            match role {
                Role::RecordId => r.record_id = cell.to_owned(),
                Role::CustomerLocation => r.customer_location = cell.to_owned(),
                Role::AddressLocation => r.address_location = cell.to_owned(),
                Role::Id(t) => r.identifiers.push(BridgeIdentifier {
                    r#type: (*t).into(),
                    value: cell.to_owned(),
                    sealed_value: Vec::new(),
                }),
                Role::SealedId(t) => r.identifiers.push(BridgeIdentifier {
                    r#type: (*t).into(),
                    value: String::new(),
                    sealed_value: B64
                        .decode(cell.trim())
                        .map_err(|_| format!("sealed {} is not base64", t.as_str_name()))?,
                }),
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records() {
        let r = parse_json_line(r#"{"record_id":"r1","msisdn":"+447700900001","account":["A","B"],"customer_location":"L"}"#).unwrap();
        assert_eq!(r.record_id, "r1");
        assert_eq!(r.identifiers.len(), 3);
        let e = parse_json_line(r#"{"record_id":"r1","phone":"+447700900001"}"#).unwrap_err();
        assert!(e.contains("unknown key") && !e.contains("7700"), "{e}");
        let e = parse_json_line(r#"{"msisdn": 447700900001}"#).unwrap_err();
        assert!(e.contains("wrong type") && !e.contains("7700"), "{e}");
        assert!(parse_json_line("{").unwrap_err().contains("not valid JSON"));
        let r = parse_json_line(r#"{"sealed":{"msisdn":["AAECAw=="]},"account":"A"}"#).unwrap();
        assert_eq!(r.identifiers[1].sealed_value, vec![0, 1, 2, 3]);
        assert!(r.identifiers[1].value.is_empty());
        assert!(
            parse_json_line(r#"{"sealed":{"msisdn":"%%%"}}"#)
                .unwrap_err()
                .contains("not base64")
        );
    }

    #[test]
    fn csv_records() {
        let h = csv::StringRecord::from(vec![
            "record_id",
            "msisdn",
            "account",
            "account",
            "customer_location",
        ]);
        let l = CsvLayout::from_header(&h).unwrap();
        let r = l
            .record(&csv::StringRecord::from(vec![
                "r1",
                "+447700900001",
                "A",
                "",
                "L",
            ]))
            .unwrap();
        assert_eq!(r.identifiers.len(), 2);
        assert_eq!(r.customer_location, "L");
        assert!(l.record(&csv::StringRecord::from(vec!["r1"])).is_err());
        assert!(
            CsvLayout::from_header(&csv::StringRecord::from(vec!["phone"]))
                .unwrap_err()
                .contains("unknown column")
        );
        // The documented header bounds: width, then length.
        let wide = csv::StringRecord::from(vec!["msisdn"; MAX_HEADER_COLUMNS + 1]);
        assert!(
            CsvLayout::from_header(&wide)
                .unwrap_err()
                .contains("4096 columns")
        );
        let ok = csv::StringRecord::from(vec!["msisdn"; MAX_HEADER_COLUMNS]);
        assert!(CsvLayout::from_header(&ok).is_ok());
        let long = csv::StringRecord::from(vec!["x".repeat(MAX_HEADER_BYTES + 1)]);
        assert!(
            CsvLayout::from_header(&long)
                .unwrap_err()
                .contains("65536 bytes")
        );
    }
}
