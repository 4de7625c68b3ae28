//! Dataset files for `idvault partner link FILE`: CSV with a header row,
//! or JSON Lines (one object a line), read into Link records
//! (docs/blind-matching.md, "Linking a dataset").
//!
//! Columns (keys) named in [`Columns::fields`] are sent as those catalogue
//! fields, the [`Columns::id`] column names each record (its line number
//! when absent), and every other column stays on this machine. Errors name
//! the file and a position, never a cell's text (a person's data).

use std::collections::HashMap;
use std::io::{BufRead, Read};

use idvault_proto::v1::{Field, LinkOptions, LinkRecord, LinkRequest};

/// A dataset file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header row.
    Csv,
    /// JSON Lines: one object a line, values strings or numbers.
    Jsonl,
}

/// Which input column becomes which field.
#[derive(Debug, Clone)]
pub struct Columns {
    /// The column naming each record.
    pub id: String,
    /// Column name to catalogue field name.
    pub fields: HashMap<String, String>,
}

impl Columns {
    /// The record of one row: `(column, value)` pairs, `line` its number.
    pub fn record<'a>(
        &self,
        line: u64,
        row: impl Iterator<Item = (&'a str, String)>,
    ) -> LinkRecord {
        self.record_with_id(line, row).0
    }

    /// [`Self::record`], and whether the row had the id column.
    fn record_with_id<'a>(
        &self,
        line: u64,
        row: impl Iterator<Item = (&'a str, String)>,
    ) -> (LinkRecord, bool) {
        let mut record_id = None;
        let mut fields = Vec::new();
        for (column, value) in row {
            let value = value.trim();
            if column == self.id {
                record_id = Some(value.to_owned());
            } else if let Some(field) = self.fields.get(column)
                && !value.is_empty()
            {
                fields.push(Field {
                    name: field.clone(),
                    value: value.to_owned(),
                });
            }
        }
        let had_id = record_id.is_some();
        let record = LinkRecord {
            record_id: record_id.unwrap_or_else(|| line.to_string()),
            fields,
        };
        (record, had_id)
    }

    /// The columns of `header` that are not sent.
    pub fn unused<'a>(&self, header: &'a [String]) -> Vec<&'a str> {
        header
            .iter()
            .map(String::as_str)
            .filter(|h| *h != self.id && !self.fields.contains_key(*h))
            .collect()
    }
}

/// The id of `record` (on `line` of `name`), refused when the vault would
/// refuse it: checked before anything is sent, so a bad row never ends a
/// one-to-one job midway.
fn checked(name: &str, line: u64, record: LinkRecord) -> Result<LinkRecord, String> {
    use idvault_core::matching::MAX_QUERY_ID;
    if record.record_id.len() > MAX_QUERY_ID {
        return Err(format!(
            "{name}: line {line}: the record id is longer than {MAX_QUERY_ID} bytes"
        ));
    }
    Ok(record)
}

/// Reads a dataset from `input` (`name` labels errors) and hands its
/// records to `sink` in messages of `per_message` (the first also carries
/// `options`); stops quietly when `sink` says `false`. `header` sees the
/// column names once (a CSV file's header row, a JSON Lines file's first
/// object's keys). Returns the records read, or an error naming the file
/// and the line.
pub fn read_records(
    input: impl Read,
    name: &str,
    format: Format,
    columns: &Columns,
    (options, per_message): (LinkOptions, usize),
    header: &mut dyn FnMut(&[String]),
    sink: &mut dyn FnMut(LinkRequest) -> bool,
) -> Result<u64, String> {
    let per_message = per_message.max(1);
    let mut batch = Vec::with_capacity(per_message);
    let mut options = Some(options);
    let mut sent = 0u64;
    let mut flush = |batch: &mut Vec<LinkRecord>, last: bool| -> bool {
        if batch.is_empty() && !(last && options.is_some()) {
            return true;
        }
        sent += batch.len() as u64;
        let msg = LinkRequest {
            options: options.take(),
            records: std::mem::take(batch),
        };
        sink(msg)
    };
    match format {
        Format::Csv => {
            let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(input);
            let names: Vec<String> = r
                .headers()
                .map_err(|e| format!("{name}: reading the header row: {e}"))?
                .iter()
                .map(|h| h.trim().to_owned())
                .collect();
            header(&names);
            for (i, row) in r.records().enumerate() {
                let row = row.map_err(|e| format!("{name}: CSV record {}: {e}", i + 1))?;
                let line = row.position().map_or(i as u64 + 2, |p| p.line());
                let cells = names
                    .iter()
                    .map(String::as_str)
                    .zip(row.iter().map(str::to_owned));
                batch.push(checked(name, line, columns.record(line, cells))?);
                if batch.len() == per_message && !flush(&mut batch, false) {
                    return Ok(sent);
                }
            }
        }
        Format::Jsonl => {
            let mut seen_header = false;
            // Whether the first object had the id key: every object must
            // agree, or an object without it would be named by its line
            // number, which can be another record's id.
            let mut ids = None;
            for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
                let n = i as u64 + 1;
                let line = line.map_err(|e| format!("{name}: line {n}: {e}"))?;
                if line.trim().is_empty() {
                    continue;
                }
                // The parser's own message may quote the line's text (a
                // person's data): only its position is reported.
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                    .map_err(|e| {
                    format!(
                        "{name}: line {n} is not a JSON object (column {})",
                        e.column()
                    )
                })?;
                if !seen_header {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    header(&keys);
                    seen_header = true;
                }
                let mut cells = Vec::with_capacity(obj.len());
                for (k, v) in &obj {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(x) => x.to_string(),
                        serde_json::Value::Null => String::new(),
                        _ => {
                            return Err(format!(
                                "{name}: line {n}: \"{k}\" must be a string or a number"
                            ));
                        }
                    };
                    cells.push((k.as_str(), v));
                }
                let (record, had_id) = columns.record_with_id(n, cells.into_iter());
                match *ids.get_or_insert(had_id) {
                    true if !had_id => {
                        return Err(format!(
                            "{name}: line {n} has no \"{}\" (the first object has it)",
                            columns.id
                        ));
                    }
                    false if had_id => {
                        return Err(format!(
                            "{name}: line {n} has \"{}\" (the first object does not, so records are named by line number)",
                            columns.id
                        ));
                    }
                    _ => {}
                }
                batch.push(checked(name, n, record)?);
                if batch.len() == per_message && !flush(&mut batch, false) {
                    return Ok(sent);
                }
            }
        }
    }
    flush(&mut batch, true);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        Columns {
            id: "ref".into(),
            fields: [("surname".to_owned(), "family_name".to_owned())]
                .into_iter()
                .collect(),
        }
    }

    fn read(data: &str, format: Format) -> Result<Vec<LinkRequest>, String> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        read_records(
            data.as_bytes(),
            "f",
            format,
            &columns(),
            (LinkOptions::default(), 2),
            &mut |h| seen = h.to_vec(),
            &mut |m| {
                out.push(m);
                true
            },
        )?;
        assert!(!seen.is_empty());
        Ok(out)
    }

    #[test]
    fn csv_and_jsonl_read_alike_in_messages() {
        let csv = "ref,surname,secret\nr1,Lovelace,x\n,Byron,y\nr3,,z\n";
        let jsonl = "{\"ref\":\"r1\",\"surname\":\"Lovelace\",\"secret\":\"x\"}\n\n\
                     {\"ref\":\"\",\"surname\":\"Byron\",\"secret\":\"y\"}\n{\"ref\":\"r3\",\"surname\":null}\n";
        let a = read(csv, Format::Csv).unwrap();
        let b = read(jsonl, Format::Jsonl).unwrap();
        for msgs in [&a, &b] {
            assert_eq!(msgs.len(), 2);
            assert!(msgs[0].options.is_some() && msgs[1].options.is_none());
            let recs: Vec<&LinkRecord> = msgs.iter().flat_map(|m| &m.records).collect();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[0].record_id, "r1");
            assert_eq!(recs[0].fields.len(), 1);
            assert_eq!(recs[0].fields[0].name, "family_name");
            assert!(recs[2].fields.is_empty());
        }
        // An empty reference cell is sent as it is (empty).
        assert_eq!(a[0].records[1].record_id, "");
        assert_eq!(b[0].records[1].record_id, "");
        // No reference key at all: the line number; an object without it
        // among objects with it (its line number could be another's id),
        // or with it among objects without, is refused, naming the line.
        let bare = read(
            "{\"surname\":\"Byron\"}\n\n{\"surname\":\"Ada\"}\n",
            Format::Jsonl,
        );
        let ids: Vec<String> = bare.unwrap()[0]
            .records
            .iter()
            .map(|r| r.record_id.clone())
            .collect();
        assert_eq!(ids, ["1", "3"]);
        for mixed in [
            "{\"ref\":\"5\",\"surname\":\"A\"}\n{\"surname\":\"B\"}\n",
            "{\"surname\":\"A\"}\n{\"ref\":\"1\",\"surname\":\"B\"}\n",
        ] {
            let e = read(mixed, Format::Jsonl).unwrap_err();
            assert!(e.contains("line 2") && e.contains("\"ref\""), "{e}");
        }
        // A reference the vault would refuse is refused before sending.
        let long = format!("ref,surname\n{},Byron\n", "r".repeat(129));
        let e = read(&long, Format::Csv).unwrap_err();
        assert!(e.contains("line 2") && e.contains("128 bytes"), "{e}");
    }

    #[test]
    fn errors_name_the_position_never_the_text() {
        let e = read(
            "{\"ref\":\"r1\",\"surname\":[\"Secretname\"]}\n",
            Format::Jsonl,
        )
        .unwrap_err();
        assert!(e.contains("line 1") && !e.contains("Secretname"), "{e}");
        let e = read("{\"ref\": Secretname}\n", Format::Jsonl).unwrap_err();
        assert!(e.contains("line 1") && !e.contains("Secretname"), "{e}");
        let e = read("ref,surname\nr1,Secretname,extra\n", Format::Csv).unwrap_err();
        assert!(
            e.contains("CSV record 1") && !e.contains("Secretname"),
            "{e}"
        );
        // An empty file still sends one message with the options.
        let mut n = 0;
        read_records(
            &b""[..],
            "f",
            Format::Jsonl,
            &columns(),
            (LinkOptions::default(), 2),
            &mut |_| {},
            &mut |_| {
                n += 1;
                true
            },
        )
        .unwrap();
        assert_eq!(n, 1);
    }
}
