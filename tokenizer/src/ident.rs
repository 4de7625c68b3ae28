//! Identifier types and their normalisation rules.
//!
//! The same customer must hash to the same token whatever the spelling in
//! a given log, so identifiers are normalised by type before any HMAC:
//!
//! | type | rule | example |
//! |---|---|---|
//! | `msisdn` | E.164: drop spaces, `-`, `.`, `(`, `)`, `/`; `+` or `00` starts the country code; a single leading `0` is a trunk prefix replaced by the default country code; otherwise the digits are taken as already international; 8–15 digits, first not 0 | `07700 900123` (default 44) → `+447700900123` |
//! | `email` | trim, lower-case (Unicode), exactly one `@`, non-empty local part and domain, no inner whitespace | ` Ada@Example.ORG ` → `ada@example.org` |
//! | `account`, `service` | as given (no change), non-empty, no control characters | `AC-001` → `AC-001` |
//! | `location` | trim, upper-case | `lon-04 ` → `LON-04` |
//!
//! The phone rule is deliberately a syntactic E.164 normaliser, not a
//! numbering-plan validator: full libphonenumber metadata costs
//! microseconds per number, which the log tokenizer cannot afford at line
//! rate, and a wrong-but-consistent number still tokenizes consistently.

use std::borrow::Cow;
use std::fmt;

/// The kind of identifier a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum IdentifierType {
    /// A phone number (MSISDN), normalised to E.164.
    Msisdn,
    /// An e-mail address.
    Email,
    /// An account number.
    Account,
    /// A service identifier.
    Service,
    /// A location code.
    Location,
}

impl IdentifierType {
    /// Every type, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::Msisdn,
        Self::Email,
        Self::Account,
        Self::Service,
        Self::Location,
    ];

    /// The stable name (also part of the HMAC input).
    pub fn name(self) -> &'static str {
        match self {
            Self::Msisdn => "msisdn",
            Self::Email => "email",
            Self::Account => "account",
            Self::Service => "service",
            Self::Location => "location",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Guesses the type from a field or column name: the last path segment
    /// containing `msisdn`/`phone`/`mobile` → msisdn, `mail` → email,
    /// `location`/`loc` → location, `service` → service, else account.
    pub fn infer(field: &str) -> Self {
        let last = field
            .rsplit('.')
            .next()
            .unwrap_or(field)
            .to_ascii_lowercase();
        if ["msisdn", "phone", "mobile", "tel"]
            .iter()
            .any(|k| last.contains(k))
        {
            Self::Msisdn
        } else if last.contains("mail") {
            Self::Email
        } else if last.contains("location") || last.ends_with("loc") {
            Self::Location
        } else if last.contains("service") {
            Self::Service
        } else {
            Self::Account
        }
    }
}

impl fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an identifier could not be normalised. Never holds the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// Empty after trimming.
    #[error("empty {0}")]
    Empty(IdentifierType),
    /// Not a phone number.
    #[error("msisdn is not an E.164 number")]
    BadPhone,
    /// A national number without a default country code configured.
    #[error("msisdn is national (leading 0) and no default country code is set")]
    NationalWithoutCountry,
    /// Not an e-mail address.
    #[error("email is not an address")]
    BadEmail,
    /// Control characters in the value.
    #[error("{0} contains a control character")]
    Control(IdentifierType),
}

/// Normalisation settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormalizeOptions {
    /// Country calling code for national numbers (e.g. 44), if any.
    pub default_country_code: Option<u16>,
}

/// Normalises `raw` as an identifier of type `ty`.
pub fn normalize<'a>(
    ty: IdentifierType,
    raw: &'a str,
    opts: &NormalizeOptions,
) -> Result<Cow<'a, str>, NormalizeError> {
    if raw.chars().any(char::is_control) {
        return Err(NormalizeError::Control(ty));
    }
    match ty {
        IdentifierType::Msisdn => normalize_phone(raw, opts).map(Cow::Owned),
        IdentifierType::Email => normalize_email(raw),
        IdentifierType::Account | IdentifierType::Service => {
            if raw.is_empty() {
                Err(NormalizeError::Empty(ty))
            } else {
                Ok(Cow::Borrowed(raw))
            }
        }
        IdentifierType::Location => {
            let t = raw.trim();
            if t.is_empty() {
                Err(NormalizeError::Empty(ty))
            } else if t.bytes().any(|b| b.is_ascii_lowercase())
                || t.len() != raw.len()
                || !t.is_ascii()
            {
                Ok(Cow::Owned(t.to_uppercase()))
            } else {
                Ok(Cow::Borrowed(raw))
            }
        }
    }
}

fn normalize_phone(raw: &str, opts: &NormalizeOptions) -> Result<String, NormalizeError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(NormalizeError::Empty(IdentifierType::Msisdn));
    }
    let mut digits = String::with_capacity(16);
    let mut plus = false;
    for (i, c) in t.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err(NormalizeError::BadPhone),
        }
    }
    let international = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix('0') {
        let cc = opts
            .default_country_code
            .ok_or(NormalizeError::NationalWithoutCountry)?;
        format!("{cc}{rest}")
    } else {
        digits
    };
    let ok = (8..=15).contains(&international.len()) && !international.starts_with('0');
    if !ok {
        return Err(NormalizeError::BadPhone);
    }
    Ok(format!("+{international}"))
}

fn normalize_email(raw: &str) -> Result<Cow<'_, str>, NormalizeError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(NormalizeError::Empty(IdentifierType::Email));
    }
    let (local, domain) = t.split_once('@').ok_or(NormalizeError::BadEmail)?;
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || t.chars().any(char::is_whitespace)
    {
        return Err(NormalizeError::BadEmail);
    }
    if t.len() == raw.len() && !t.chars().any(char::is_uppercase) {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(t.to_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UK: NormalizeOptions = NormalizeOptions {
        default_country_code: Some(44),
    };

    #[test]
    fn phone_table() {
        let cases = [
            ("+44 7700 900123", Ok("+447700900123")),
            ("0044 7700-900-123", Ok("+447700900123")),
            ("07700 900123", Ok("+447700900123")),
            ("447700900123", Ok("+447700900123")),
            ("(0)7700.900.123", Ok("+447700900123")),
            ("+1 (415) 555-0100", Ok("+14155550100")),
            ("+44 77", Err(NormalizeError::BadPhone)),
            ("+44 7700 900123 ext 5", Err(NormalizeError::BadPhone)),
            ("1234567890123456", Err(NormalizeError::BadPhone)),
            ("7700+900123", Err(NormalizeError::BadPhone)),
            ("  ", Err(NormalizeError::Empty(IdentifierType::Msisdn))),
        ];
        for (raw, want) in cases {
            let got = normalize(IdentifierType::Msisdn, raw, &UK).map(Cow::into_owned);
            assert_eq!(got, want.map(str::to_owned), "{raw}");
        }
        assert_eq!(
            normalize(
                IdentifierType::Msisdn,
                "07700900123",
                &NormalizeOptions::default()
            ),
            Err(NormalizeError::NationalWithoutCountry)
        );
    }

    #[test]
    fn email_table() {
        let cases = [
            (" Ada@Example.ORG ", Ok("ada@example.org")),
            ("ada@example.org", Ok("ada@example.org")),
            ("ÉLodie@Exemple.FR", Ok("élodie@exemple.fr")),
            ("no-at-sign", Err(NormalizeError::BadEmail)),
            ("a@b@c", Err(NormalizeError::BadEmail)),
            ("@example.org", Err(NormalizeError::BadEmail)),
            ("a b@example.org", Err(NormalizeError::BadEmail)),
        ];
        for (raw, want) in cases {
            let got = normalize(IdentifierType::Email, raw, &UK).map(Cow::into_owned);
            assert_eq!(got, want.map(str::to_owned), "{raw}");
        }
    }

    #[test]
    fn account_location_and_control_chars() {
        assert_eq!(
            normalize(IdentifierType::Account, " AC-001", &UK).unwrap(),
            " AC-001"
        );
        assert_eq!(
            normalize(IdentifierType::Service, "svc:9", &UK).unwrap(),
            "svc:9"
        );
        assert_eq!(
            normalize(IdentifierType::Location, " lon-04 ", &UK).unwrap(),
            "LON-04"
        );
        assert_eq!(
            normalize(IdentifierType::Location, "LON-04", &UK).unwrap(),
            "LON-04"
        );
        assert_eq!(
            normalize(IdentifierType::Account, "", &UK),
            Err(NormalizeError::Empty(IdentifierType::Account))
        );
        assert_eq!(
            normalize(IdentifierType::Account, "a\u{0}", &UK),
            Err(NormalizeError::Control(IdentifierType::Account))
        );
    }

    #[test]
    fn inference() {
        assert_eq!(IdentifierType::infer("user.msisdn"), IdentifierType::Msisdn);
        assert_eq!(
            IdentifierType::infer("contact.Email"),
            IdentifierType::Email
        );
        assert_eq!(IdentifierType::infer("account_id"), IdentifierType::Account);
        assert_eq!(
            IdentifierType::infer("cell.location_code"),
            IdentifierType::Location
        );
        assert_eq!(IdentifierType::infer("service_id"), IdentifierType::Service);
    }
}
