//! The schema file (TOML) that `idvault manifest build --schema` reads:
//! the record key and the compared fields, with their columns and
//! normalisers (docs/manifests.md). Parsed here, without I/O, so the
//! parser can be fuzzed; the CLI only reads the file.

use serde::Deserialize;

use super::{InputFormat, ManifestError, Normaliser, Schema, SchemaField};

/// Largest schema text accepted, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    format: Option<String>,
    default_country_code: Option<u16>,
    key: FieldFile,
    fields: Vec<FieldFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    /// Canonical name (both sides use the same); default: the column.
    name: Option<String>,
    /// Column or JSON path on this side; default: the name.
    column: Option<String>,
    /// Normaliser; default `trim`.
    normalise: Option<String>,
}

fn field(f: FieldFile, what: &str) -> Result<SchemaField, ManifestError> {
    let (name, column) = match (f.name, f.column) {
        (Some(n), Some(c)) => (n, c),
        (Some(n), None) => (n.clone(), n),
        (None, Some(c)) => (c.clone(), c),
        (None, None) => {
            return Err(ManifestError::Schema(format!(
                "{what} needs a name or a column"
            )));
        }
    };
    let norm = f.normalise.unwrap_or_else(|| "trim".into());
    let normaliser = Normaliser::parse(&norm).ok_or_else(|| {
        let all: Vec<_> = Normaliser::ALL.iter().map(|n| n.name()).collect();
        ManifestError::Schema(format!(
            "{what} {name:?}: unknown normaliser {norm:?} (one of {})",
            all.join(", ")
        ))
    })?;
    Ok(SchemaField::new(&name, &column, normaliser))
}

/// A schema from its file's text, validated, and the input format it
/// names, if any (`format = "csv"` or `"jsonl"`).
///
/// An error never quotes the text: a key file or an export passed as the
/// schema by mistake would be echoed. TOML errors give the message and
/// the line only.
pub fn parse_schema(text: &str) -> Result<(Schema, Option<InputFormat>), ManifestError> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(ManifestError::Schema("over 1 MiB".into()));
    }
    let f: SchemaFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").matches('\n').count() + 1);
        ManifestError::Schema(format!(
            "{}{}",
            line.map(|l| format!("line {l}: ")).unwrap_or_default(),
            e.message()
        ))
    })?;
    let format = match f.format.as_deref() {
        None => None,
        Some("csv") => Some(InputFormat::Csv),
        Some("jsonl") => Some(InputFormat::JsonLines),
        Some(_) => {
            return Err(ManifestError::Schema(
                "format must be \"csv\" or \"jsonl\"".into(),
            ));
        }
    };
    let schema = Schema {
        key: field(f.key, "key")?,
        fields: f
            .fields
            .into_iter()
            .map(|x| field(x, "field"))
            .collect::<Result<_, _>>()?,
        default_country_code: f.default_country_code,
    };
    schema.validate()?;
    Ok((schema, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_and_its_refusals() {
        let (s, f) = parse_schema(
            "format = \"csv\"\nkey = { name = \"id\" }\n\
             [[fields]]\nname = \"email\"\ncolumn = \"mail\"\nnormalise = \"email\"\n",
        )
        .unwrap();
        assert_eq!(f, Some(InputFormat::Csv));
        assert_eq!((s.key.name.as_str(), s.key.column.as_str()), ("id", "id"));
        assert_eq!(s.fields[0].column, "mail");
        for (bad, says) in [
            ("key = {}\nfields = []", "needs a name or a column"),
            (
                "format = \"xml\"\nkey = { name = \"id\" }\nfields = []",
                "format must be",
            ),
            ("secret = \"0123456789abcdef\"", "line 1"),
            (
                "key = { name = \"id\" }\n[[fields]]\nname = \"a\"\nnormalise = \"nope\"",
                "unknown normaliser",
            ),
        ] {
            let e = parse_schema(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }
    }
}
