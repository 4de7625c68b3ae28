//! Subjects, field names and field values, validated at the edge.
//!
//! Lifecycle as types: a request's raw strings become [`FieldName`] and
//! [`FieldValue`] only through the validating constructors, and only
//! validated values reach packet sealing.
//!
//! Field values are personal data: a [`FieldValue`] is wiped on drop, and
//! neither its `Debug` output nor a [`FieldError`] may ever contain one.

use std::fmt;

use zeroize::Zeroizing;

/// Largest accepted field value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most fields in one create or update request.
pub const MAX_FIELDS_PER_REQUEST: usize = 64;

/// The catalogue of personal-data fields a subject may hold.
///
/// A closed list on purpose: a typo in a partner's integration ("emial")
/// is refused instead of silently creating a field nobody will ever match
/// or release. See `docs/fields.md`.
pub const FIELD_CATALOGUE: &[&str] = &[
    "given_name",
    "middle_name",
    "family_name",
    "date_of_birth",
    "national_id",
    "phone",
    "email",
    "street_address",
    "postcode",
    "city",
    "country",
    "account_number",
];

/// Catalogue field names joined by commas (no catalogue name holds one):
/// how field lists are stored and audited.
pub fn join_field_names(fields: &[FieldName]) -> String {
    fields
        .iter()
        .map(FieldName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Validation failures. They name the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The field name is not in [`FIELD_CATALOGUE`].
    #[error("unknown field name (see docs/fields.md for the catalogue)")]
    UnknownField,
    /// The value is empty or only whitespace.
    #[error("field '{0}' has an empty value")]
    EmptyValue(&'static str),
    /// The value is longer than [`MAX_VALUE_BYTES`].
    #[error("field '{0}' value exceeds {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(&'static str),
    /// The value holds a control character.
    #[error("field '{0}' value contains a control character")]
    ControlCharacter(&'static str),
    /// The same field appears twice in one request.
    #[error("field '{0}' appears more than once")]
    Duplicate(&'static str),
    /// No fields were given.
    #[error("at least one field is required")]
    NoFields,
    /// Too many fields in one request.
    #[error("at most {MAX_FIELDS_PER_REQUEST} fields per request")]
    TooManyFields,
    /// A subject id did not parse.
    #[error("subject_id is not a valid subject identifier")]
    BadSubjectId,
}

/// A subject's 128-bit random identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId([u8; 16]);

impl SubjectId {
    /// From raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    /// Draws a fresh random id.
    pub fn generate(rng: &dyn super::Rng) -> Result<Self, super::crypto::CryptoError> {
        let mut b = [0u8; 16];
        rng.fill(&mut b)?;
        Ok(Self(
            uuid::Builder::from_random_bytes(b).into_uuid().into_bytes(),
        ))
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the canonical hyphenated UUID text form.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        // Only the 36-character hyphenated form: one spelling per id.
        if s.len() != 36 {
            return Err(FieldError::BadSubjectId);
        }
        uuid::Uuid::try_parse(s)
            .map(|u| Self(u.into_bytes()))
            .map_err(|_| FieldError::BadSubjectId)
    }

    /// From a stored 16-byte column.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectId({self})")
    }
}

/// A catalogue field name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct FieldName(&'static str);

impl FieldName {
    /// Validates `name` against the catalogue.
    pub fn parse(name: &str) -> Result<Self, FieldError> {
        FIELD_CATALOGUE
            .iter()
            .find(|c| **c == name)
            .map(|c| Self(c))
            .ok_or(FieldError::UnknownField)
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A validated personal-data value, wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldValue(Zeroizing<String>);

impl FieldValue {
    /// Validates a value for `field`.
    pub fn parse(field: FieldName, value: String) -> Result<Self, FieldError> {
        let value = Zeroizing::new(value);
        if value.trim().is_empty() {
            return Err(FieldError::EmptyValue(field.as_str()));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(FieldError::ValueTooLong(field.as_str()));
        }
        if value.chars().any(char::is_control) {
            return Err(FieldError::ControlCharacter(field.as_str()));
        }
        Ok(Self(value))
    }

    /// From bytes a packet decrypted to (already validated when sealed).
    pub(crate) fn from_trusted(value: Zeroizing<String>) -> Self {
        Self(value)
    }

    /// Exposes the value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldValue({} bytes, redacted)", self.0.len())
    }
}

/// Validates a request's `(name, value)` pairs: 1..=64 fields, catalogue
/// names, no duplicates, valid values.
pub fn validate_fields(
    raw: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(FieldName, FieldValue)>, FieldError> {
    let raw: Vec<(String, String)> = raw.into_iter().collect();
    if raw.len() > MAX_FIELDS_PER_REQUEST {
        return Err(FieldError::TooManyFields);
    }
    let mut out: Vec<(FieldName, FieldValue)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let name = FieldName::parse(&name)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(FieldError::Duplicate(name.as_str()));
        }
        let value = FieldValue::parse(name, value)?;
        out.push((name, value));
    }
    if out.is_empty() {
        return Err(FieldError::NoFields);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str, v: &str) -> (String, String) {
        (n.to_owned(), v.to_owned())
    }

    #[test]
    fn validation_rules() {
        assert!(validate_fields([f("email", "a@b.c")]).is_ok());
        assert_eq!(validate_fields([]), Err(FieldError::NoFields));
        assert_eq!(
            validate_fields([f("emial", "x")]),
            Err(FieldError::UnknownField)
        );
        assert_eq!(
            validate_fields([f("email", "  ")]),
            Err(FieldError::EmptyValue("email"))
        );
        assert_eq!(
            validate_fields([f("city", &"x".repeat(MAX_VALUE_BYTES + 1))]),
            Err(FieldError::ValueTooLong("city"))
        );
        assert_eq!(
            validate_fields([f("city", "a\u{0}b")]),
            Err(FieldError::ControlCharacter("city"))
        );
        assert_eq!(
            validate_fields([f("city", "x"), f("city", "y")]),
            Err(FieldError::Duplicate("city"))
        );
    }

    #[test]
    fn errors_and_debug_never_show_values() {
        let err = validate_fields([f("city", "Zürich\u{7}")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("Zürich"));
        let v = FieldValue::parse(FieldName::parse("city").unwrap(), "Zürich".into()).unwrap();
        assert!(!format!("{v:?}").contains("Zürich"));
    }

    #[test]
    fn subject_id_text_form() {
        let id = SubjectId::from_bytes([0xab; 16]);
        let s = id.to_string();
        assert_eq!(s, "abababab-abab-abab-abab-abababababab");
        assert_eq!(SubjectId::parse(&s).unwrap(), id);
        assert!(SubjectId::parse("abababababababababababababababab").is_err());
        assert!(SubjectId::parse("").is_err());
    }
}
