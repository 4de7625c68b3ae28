//! Normalised variants of matchable fields, for blind matching.
//!
//! Each variant has a named, versioned kind (`name.folded.v1`, …): two
//! records agree on a kind when their variants of that kind are equal. The
//! vault stores only keyed blind indexes of variants, never the variants.
//! Every rule is documented here and unit-tested; a rule change gets a new
//! version so stored indexes of the old one stay meaningful.
//!
//! | field | kinds |
//! |---|---|
//! | given name | `name.folded.v1`, `name.nickname.v1` (one per canonical name), `name.phonetic.v1` (Double Metaphone primary and alternate), `name.edit1.v1` |
//! | family name | `name.folded.v1`, `name.phonetic.v1`, `name.edit1.v1` |
//! | date of birth | `dob.iso.v1`, `dob.swapped.v1` (day and month exchanged, when both ≤ 12 and differ), `dob.year.v1`, `dob.edit1.v1` (one-deletion neighbourhood of `YYYYMMDD`, also for dates that do not exist) |
//! | national id | `nid.full.v1` (alphanumerics, upper case), `nid.last4.v1`, `nid.edit1.v1` |
//! | phone | `phone.e164.v1` |
//! | e-mail | `email.canonical.v1` (lower case, `+tag` removed; Gmail: dots removed and googlemail.com → gmail.com) |
//! | street address | `address.folded.v1` (folded, street types abbreviated), `address.near.v1` (the street words with each one-deletion neighbour of the house number) |
//! | postcode | `postcode.folded.v1` (alphanumerics, upper case), `postcode.edit1.v1` |
//! | city | `city.folded.v1`, `city.edit1.v1` |
//!
//! Compound *blocking keys* ([`compound_variants`]) join several fields of
//! one record, so that a duplicate whose identifying fields are all
//! corrupted still shares a key with its original: `block.names.v1` (the
//! two names' phonetic codes, in sorted order, so swapped names agree),
//! `block.family_year.v1`, `block.given_mmdd.v1` and
//! `block.postcode_house.v1`.
//!
//! [`qgrams`] gives the bigram sets that the vault encodes, under a key, in
//! small Bloom filters (names, street, city) compared by Dice coefficient.
//!
//! Folding = Unicode NFKD, combining marks removed, lower case, every run
//! of non-alphanumerics becomes one space, trimmed.
//!
//! `name.edit1.v1` is the symmetric-deletion neighbourhood of the folded
//! name without spaces (the name itself and every string with one character
//! deleted), for names of [`EDIT1_MIN_CHARS`] to [`EDIT1_MAX_CHARS`]
//! characters. Two names share an entry exactly when one typo apart: a
//! substitution, an insertion or deletion, or two adjacent letters swapped
//! ("smith"/"smtih" share "smth"). Short names are left out because their
//! neighbourhoods collide with too many other names. The `*.edit1.v1` kinds
//! of national ids, dates (as `YYYYMMDD`), postcodes and cities are built
//! the same way ([`deletion_neighbourhood`]).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::ident::{IdentifierType, NormalizeOptions, normalize};

/// A matchable field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MatchField {
    /// Given (first) name.
    GivenName,
    /// Family name.
    FamilyName,
    /// Date of birth.
    DateOfBirth,
    /// National identity number.
    NationalId,
    /// Phone number.
    Phone,
    /// E-mail address.
    Email,
    /// Street address.
    StreetAddress,
    /// Postcode.
    Postcode,
    /// City.
    City,
}

impl MatchField {
    /// Every matchable field.
    pub const ALL: [Self; 9] = [
        Self::GivenName,
        Self::FamilyName,
        Self::DateOfBirth,
        Self::NationalId,
        Self::Phone,
        Self::Email,
        Self::StreetAddress,
        Self::Postcode,
        Self::City,
    ];

    /// The vault's field-catalogue name.
    pub fn name(self) -> &'static str {
        match self {
            Self::GivenName => "given_name",
            Self::FamilyName => "family_name",
            Self::DateOfBirth => "date_of_birth",
            Self::NationalId => "national_id",
            Self::Phone => "phone",
            Self::Email => "email",
            Self::StreetAddress => "street_address",
            Self::Postcode => "postcode",
            Self::City => "city",
        }
    }

    /// From a catalogue name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Which column of a partner's file holds which field (`idvault
    /// partner link`, `idvault bench match --records`): column name to
    /// catalogue name. `map` holds `(field, column)` pairs (`--map
    /// FIELD=COLUMN`); every field not mapped is read from the column
    /// named like it. An unknown field or a column mapped twice is an
    /// error naming them.
    pub fn columns(
        map: &[(String, String)],
    ) -> Result<std::collections::HashMap<String, String>, String> {
        let mut fields = std::collections::HashMap::new();
        for (field, column) in map {
            if Self::parse(field).is_none() {
                return Err(format!(
                    "--map {field}={column}: {field} is not a matchable field (one of {})",
                    Self::ALL.map(Self::name).join(", ")
                ));
            }
            if fields.insert(column.clone(), field.clone()).is_some() {
                return Err(format!("--map: column {column} is mapped twice"));
            }
        }
        for f in Self::ALL {
            let name = f.name().to_owned();
            // A mapped field is taken from its mapped column only.
            if !fields.values().any(|v| *v == name) {
                fields.entry(name.clone()).or_insert(name);
            }
        }
        Ok(fields)
    }

    /// Stable storage code (the index in [`Self::ALL`]; never renumbered).
    pub fn code(self) -> u8 {
        match self {
            Self::GivenName => 0,
            Self::FamilyName => 1,
            Self::DateOfBirth => 2,
            Self::NationalId => 3,
            Self::Phone => 4,
            Self::Email => 5,
            Self::StreetAddress => 6,
            Self::Postcode => 7,
            Self::City => 8,
        }
    }

    /// From a storage code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

/// Every variant kind [`variants`] can produce for `field`.
pub fn kinds(field: MatchField) -> &'static [&'static str] {
    match field {
        MatchField::GivenName => &[
            "name.folded.v1",
            "name.nickname.v1",
            "name.phonetic.v1",
            "name.edit1.v1",
        ],
        MatchField::FamilyName => &["name.folded.v1", "name.phonetic.v1", "name.edit1.v1"],
        MatchField::DateOfBirth => &[
            "dob.iso.v1",
            "dob.swapped.v1",
            "dob.year.v1",
            "dob.edit1.v1",
        ],
        MatchField::NationalId => &["nid.full.v1", "nid.last4.v1", "nid.edit1.v1"],
        MatchField::Phone => &["phone.e164.v1"],
        MatchField::Email => &["email.canonical.v1"],
        MatchField::StreetAddress => &["address.folded.v1", "address.near.v1"],
        MatchField::Postcode => &["postcode.folded.v1", "postcode.edit1.v1"],
        MatchField::City => &["city.folded.v1", "city.edit1.v1"],
    }
}

/// The storage code of `kind` within `field`: its position in
/// [`kinds`] (kinds are only ever appended, never reordered).
pub fn kind_code(field: MatchField, kind: &str) -> Option<u8> {
    kinds(field)
        .iter()
        .position(|k| *k == kind)
        .and_then(|i| u8::try_from(i).ok())
}

/// The kind of a storage code ([`kind_code`]).
pub fn kind_of_code(field: MatchField, code: u8) -> Option<&'static str> {
    kinds(field).get(usize::from(code)).copied()
}

/// Compound blocking-key kinds ([`compound_variants`]), in storage order.
pub const COMPOUND_KINDS: [&str; 4] = [
    "block.names.v1",
    "block.family_year.v1",
    "block.given_mmdd.v1",
    "block.postcode_house.v1",
];

/// A variant: its kind (with version) and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    /// Kind, e.g. `name.folded.v1`.
    pub kind: &'static str,
    /// Normalised value.
    pub value: String,
}

fn v(kind: &'static str, value: impl Into<String>) -> Variant {
    Variant {
        kind,
        value: value.into(),
    }
}

/// Folds text: NFKD, no combining marks, lower case, punctuation and
/// whitespace runs to one space, trimmed.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.nfkd().filter(|c| !is_combining_mark(*c)) {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else {
            space = true;
        }
    }
    out
}

/// Shortest name (in characters, spaces removed) given `name.edit1.v1` variants.
pub const EDIT1_MIN_CHARS: usize = 4;
/// Longest name given `name.edit1.v1` variants (bounds the rows per name).
pub const EDIT1_MAX_CHARS: usize = 24;

/// The one-deletion neighbourhood of `folded` (spaces removed), itself included.
fn edit1(folded: &str) -> Vec<String> {
    deletion_neighbourhood(folded, EDIT1_MIN_CHARS)
}

/// The one-deletion neighbourhood of `s` without its spaces: `s` itself
/// and every string with one character deleted, for strings of `min` to
/// [`EDIT1_MAX_CHARS`] characters (none otherwise). Two strings share an
/// entry exactly when they are at most one substitution, insertion,
/// deletion or adjacent transposition apart.
pub fn deletion_neighbourhood(s: &str, min: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().filter(|c| *c != ' ').collect();
    if !(min..=EDIT1_MAX_CHARS).contains(&chars.len()) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(chars.len() + 1);
    out.push(chars.iter().collect());
    for skip in 0..chars.len() {
        out.push(
            chars
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, c)| *c)
                .collect(),
        );
    }
    out
}

/// Street-type abbreviations applied word by word after folding.
pub const STREET_ABBREVIATIONS: &[(&str, &str)] = &[
    ("street", "st"),
    ("road", "rd"),
    ("avenue", "ave"),
    ("av", "ave"),
    ("boulevard", "blvd"),
    ("drive", "dr"),
    ("lane", "ln"),
    ("court", "ct"),
    ("place", "pl"),
    ("square", "sq"),
    ("terrace", "ter"),
    ("crescent", "cres"),
    ("close", "cl"),
    ("highway", "hwy"),
    ("north", "n"),
    ("south", "s"),
    ("east", "e"),
    ("west", "w"),
    ("apartment", "apt"),
    ("flat", "apt"),
];

/// The digits of a date as `YYYYMMDD` when it has the shape of one of the
/// [`parse_date`] forms, whether or not the date exists: a typo can make
/// "1990-13-07" of "1990-03-07", and the two are still one digit apart.
pub fn date_digits(s: &str) -> Option<String> {
    if let Some((y, m, d)) = parse_date(s) {
        return Some(format!("{y:04}{m:02}{d:02}"));
    }
    let parts: Vec<&str> = s
        .trim()
        .split(['-', '/', '.', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    if !parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let (y, m, d) = match parts.as_slice() {
        [one] if one.len() == 8 => (one.get(0..4)?, one.get(4..6)?, one.get(6..8)?),
        [a, b, c] if a.len() == 4 && b.len() <= 2 && c.len() <= 2 => (*a, *b, *c),
        [a, b, c] if c.len() == 4 && a.len() <= 2 && b.len() <= 2 => (*c, *b, *a),
        _ => return None,
    };
    Some(format!("{y}{m:0>2}{d:0>2}"))
}

/// The house number of a folded street address: its first word holding a
/// digit ("12", "12a", "3b"), if any.
pub fn house_number(folded_address: &str) -> Option<&str> {
    folded_address
        .split(' ')
        .find(|w| w.bytes().any(|b| b.is_ascii_digit()))
}

/// A street address folded with street types abbreviated (the value of
/// `address.folded.v1`), or `None` when nothing is left.
pub fn fold_address(value: &str) -> Option<String> {
    let f = fold(value);
    let words: Vec<&str> = f
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| {
            STREET_ABBREVIATIONS
                .iter()
                .find(|(l, _)| *l == w)
                .map_or(w, |(_, s)| *s)
        })
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Alphanumerics of a postcode, upper case (the value of `postcode.folded.v1`).
pub fn fold_postcode(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Alphanumerics of a national id, ASCII upper case (`nid.full.v1`).
pub fn fold_national_id(value: &str) -> String {
    value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The primary Double Metaphone code of a folded name, or the folded name
/// without spaces when it has no Latin letters.
pub fn name_code(folded: &str) -> String {
    let ascii: String = folded.chars().filter(char::is_ascii_alphabetic).collect();
    if ascii.is_empty() {
        return folded.replace(' ', "");
    }
    let dm = rphonetic::DoubleMetaphone::new(None).double_metaphone(&ascii);
    let code = dm.primary();
    if code.is_empty() { ascii } else { code }
}

/// Compound blocking keys of one record (`(field, value)` pairs, each
/// field at most once): keys that join fields, so that a duplicate whose
/// identifying fields are all corrupted still shares one with its
/// original. Each is built only when its parts are present:
///
/// * `block.names.v1`: the phonetic codes of both names, sorted (swapped
///   given and family names give the same key);
/// * `block.family_year.v1`: family-name code and year of birth;
/// * `block.given_mmdd.v1`: given-name code, month and day of birth;
/// * `block.postcode_house.v1`: postcode and house number.
///
/// `swap` builds the keys as if given and family name were exchanged
/// (what a query probes besides its own keys).
pub fn compound_variants(record: &[(MatchField, &str)], swap: bool) -> Vec<Variant> {
    let get = |f: MatchField| record.iter().find(|(g, _)| *g == f).map(|(_, v)| *v);
    let code = |f: MatchField| {
        let folded = fold(get(f)?);
        let first = if f == MatchField::GivenName {
            folded.split(' ').next().unwrap_or_default().to_owned()
        } else {
            folded
        };
        (!first.is_empty()).then(|| name_code(&first))
    };
    let (mut given, mut family) = (code(MatchField::GivenName), code(MatchField::FamilyName));
    if swap {
        std::mem::swap(&mut given, &mut family);
    }
    let date = get(MatchField::DateOfBirth).and_then(parse_date);
    let mut out = Vec::new();
    if let (Some(g), Some(f)) = (&given, &family) {
        let (a, b) = if g <= f { (g, f) } else { (f, g) };
        out.push(v("block.names.v1", format!("{a}|{b}")));
    }
    if let (Some(f), Some((y, _, _))) = (&family, date) {
        out.push(v("block.family_year.v1", format!("{f}|{y:04}")));
    }
    if let (Some(g), Some((_, m, d))) = (&given, date) {
        out.push(v("block.given_mmdd.v1", format!("{g}|{m:02}{d:02}")));
    }
    if !swap && let (Some(p), Some(a)) = (get(MatchField::Postcode), get(MatchField::StreetAddress))
    {
        let p = fold_postcode(p);
        if let Some(h) = fold_address(a).as_deref().and_then(house_number)
            && !p.is_empty()
        {
            out.push(v("block.postcode_house.v1", format!("{p}|{h}")));
        }
    }
    out
}

/// Fields whose bigram sets are encoded in keyed Bloom filters.
pub const QGRAM_FIELDS: [MatchField; 4] = [
    MatchField::GivenName,
    MatchField::FamilyName,
    MatchField::StreetAddress,
    MatchField::City,
];

/// The distinct bigrams of a field's folded value (street addresses with
/// their types abbreviated), padded with `_` at both ends and with `_` for
/// spaces: "ann lee" → `_a an nn n_ _l le ee e_`. Empty for fields
/// without q-gram encodings.
pub fn qgrams(field: MatchField, value: &str) -> Vec<String> {
    let folded = match field {
        MatchField::GivenName | MatchField::FamilyName | MatchField::City => fold(value),
        MatchField::StreetAddress => fold_address(value).unwrap_or_default(),
        _ => return Vec::new(),
    };
    if folded.is_empty() {
        return Vec::new();
    }
    let padded: Vec<char> = std::iter::once('_')
        .chain(folded.chars().map(|c| if c == ' ' { '_' } else { c }))
        .chain(std::iter::once('_'))
        .collect();
    let mut out: Vec<String> = padded.windows(2).map(|w| w.iter().collect()).collect();
    out.sort();
    out.dedup();
    out
}

/// Parses a date of birth into `(year, month, day)`: `YYYY-MM-DD`,
/// `YYYY/MM/DD`, `YYYYMMDD`, `DD/MM/YYYY`, `DD.MM.YYYY`, `DD-MM-YYYY`.
/// Day-first is the reading of the two-digit-first forms; the swapped
/// variant covers month-first writers.
pub fn parse_date(s: &str) -> Option<(u16, u8, u8)> {
    let t = s.trim();
    let parts: Vec<&str> = t
        .split(['-', '/', '.', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    let (y, m, d) = match parts.as_slice() {
        [one] if one.len() == 8 && one.bytes().all(|b| b.is_ascii_digit()) => {
            (one.get(0..4)?, one.get(4..6)?, one.get(6..8)?)
        }
        [a, b, c] if a.len() == 4 => (*a, *b, *c),
        [a, b, c] if c.len() == 4 => (*c, *b, *a),
        _ => return None,
    };
    let (y, m, d): (u16, u8, u8) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    ((1800..=2200).contains(&y) && (1..=days).contains(&d)).then_some((y, m, d))
}

/// The variants of `value` as field `field`. Values that do not parse
/// (a date that is no date) give no variant rather than a wrong one.
pub fn variants(field: MatchField, value: &str, opts: &NormalizeOptions) -> Vec<Variant> {
    let mut out = Vec::new();
    match field {
        MatchField::GivenName | MatchField::FamilyName => {
            let f = fold(value);
            if f.is_empty() {
                return out;
            }
            if field == MatchField::GivenName {
                // The first word carries the nickname (middle names vary).
                let first = f.split(' ').next().unwrap_or(&f);
                for c in crate::nicknames::canonical_forms(first) {
                    out.push(v("name.nickname.v1", c));
                }
            }
            // Double Metaphone is defined on Latin letters, and the crate
            // slices its input by byte: feed it ASCII only (the fuzzer found
            // a panic on "SӔ"). Names in other scripts get no phonetic code.
            let ascii: String = f.chars().filter(char::is_ascii_alphabetic).collect();
            if !ascii.is_empty() {
                let dm = rphonetic::DoubleMetaphone::new(None).double_metaphone(&ascii);
                for code in [dm.primary(), dm.alternate()] {
                    if !code.is_empty() {
                        out.push(v("name.phonetic.v1", code));
                    }
                }
            }
            for e in edit1(&f) {
                out.push(v("name.edit1.v1", e));
            }
            out.push(v("name.folded.v1", f));
        }
        MatchField::DateOfBirth => {
            if let Some((y, m, d)) = parse_date(value) {
                out.push(v("dob.iso.v1", format!("{y:04}-{m:02}-{d:02}")));
                if d <= 12 && d != m {
                    out.push(v("dob.swapped.v1", format!("{y:04}-{d:02}-{m:02}")));
                }
                out.push(v("dob.year.v1", format!("{y:04}")));
            }
            // A date that does not exist still gets its neighbourhood:
            // it is most likely a typo of one that does.
            if let Some(digits) = date_digits(value) {
                for e in deletion_neighbourhood(&digits, 8) {
                    out.push(v("dob.edit1.v1", e));
                }
            }
        }
        MatchField::NationalId => {
            let id = fold_national_id(value);
            if id.len() >= 4 {
                out.push(v(
                    "nid.last4.v1",
                    id.get(id.len() - 4..).unwrap_or_default(),
                ));
                // Ids of five characters or more: shorter ones have
                // neighbourhoods shared by too many others.
                for e in deletion_neighbourhood(&id, 5) {
                    out.push(v("nid.edit1.v1", e));
                }
                out.push(v("nid.full.v1", id));
            }
        }
        MatchField::Phone => {
            if let Ok(p) = normalize(IdentifierType::Msisdn, value, opts) {
                out.push(v("phone.e164.v1", p.into_owned()));
            }
        }
        MatchField::Email => {
            if let Some(e) = canonical_email(value) {
                out.push(v("email.canonical.v1", e));
            }
        }
        MatchField::StreetAddress => {
            if let Some(a) = fold_address(value) {
                if let Some(h) = house_number(&a) {
                    // Same street words, house numbers at most one edit
                    // apart ("12"/"21"/"13"/"112"): one shared entry.
                    let street: Vec<&str> = a.split(' ').filter(|w| *w != h).collect();
                    let street = street.join(" ");
                    if !street.is_empty() {
                        let mut near = deletion_neighbourhood(h, 1);
                        if h.chars().count() == 1 {
                            // A one-character number's deletion is empty:
                            // keep only the number itself.
                            near.truncate(1);
                        }
                        for n in near {
                            out.push(v("address.near.v1", format!("{street}|{n}")));
                        }
                    }
                }
                out.push(v("address.folded.v1", a));
            }
        }
        MatchField::Postcode => {
            let p = fold_postcode(value);
            if !p.is_empty() {
                for e in deletion_neighbourhood(&p, 4) {
                    out.push(v("postcode.edit1.v1", e));
                }
                out.push(v("postcode.folded.v1", p));
            }
        }
        MatchField::City => {
            let f = fold(value);
            if !f.is_empty() {
                for e in deletion_neighbourhood(&f, EDIT1_MIN_CHARS) {
                    out.push(v("city.edit1.v1", e));
                }
                out.push(v("city.folded.v1", f));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Canonical e-mail: trimmed, lower case, `+tag` removed from the local
/// part; for Gmail (gmail.com, googlemail.com) dots in the local part are
/// removed and the domain is gmail.com, since Gmail ignores both.
pub fn canonical_email(value: &str) -> Option<String> {
    let e = normalize(IdentifierType::Email, value, &NormalizeOptions::default()).ok()?;
    let (local, domain) = e.split_once('@')?;
    let local = local.split('+').next().unwrap_or(local);
    let (local, domain) = match domain {
        "gmail.com" | "googlemail.com" => (local.replace('.', ""), "gmail.com"),
        _ => (local.to_owned(), domain),
    };
    (!local.is_empty()).then(|| format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(field: MatchField, value: &str) -> Vec<(String, String)> {
        variants(
            field,
            value,
            &NormalizeOptions {
                default_country_code: Some(44),
            },
        )
        .into_iter()
        .map(|v| (v.kind.to_owned(), v.value))
        .collect()
    }

    fn has(field: MatchField, value: &str, kind: &str, want: &str) -> bool {
        kinds(field, value)
            .iter()
            .any(|(k, v)| k == kind && v == want)
    }

    #[test]
    fn folding_removes_accents_case_and_punctuation() {
        assert_eq!(fold("  José-María  O'Brien "), "jose maria o brien");
        assert_eq!(fold("ÉLODIE"), "elodie");
        assert_eq!(fold("Zoë"), "zoe");
        assert_eq!(fold("Ａｄａ"), "ada"); // full-width letters (NFKD)
        assert_eq!(fold("---"), "");
    }

    #[test]
    fn nicknames_and_phonetics() {
        assert!(has(
            MatchField::GivenName,
            "Bill",
            "name.nickname.v1",
            "william"
        ));
        assert!(has(
            MatchField::GivenName,
            "William",
            "name.nickname.v1",
            "william"
        ));
        assert!(has(
            MatchField::GivenName,
            "Peggy Ann",
            "name.nickname.v1",
            "margaret"
        ));
        // "alex" is short for two names: both are variants.
        assert!(has(
            MatchField::GivenName,
            "Alex",
            "name.nickname.v1",
            "alexander"
        ));
        assert!(has(
            MatchField::GivenName,
            "Alex",
            "name.nickname.v1",
            "alexandra"
        ));
        // Phonetic codes agree across spellings.
        let a = kinds(MatchField::FamilyName, "Smith");
        let b = kinds(MatchField::FamilyName, "Smyth");
        assert!(
            a.iter().any(|x| x.0 == "name.phonetic.v1" && b.contains(x)),
            "{a:?} {b:?}"
        );
        let c = kinds(MatchField::FamilyName, "Schmidt");
        assert!(
            c.iter().any(|x| x.0 == "name.phonetic.v1" && b.contains(x)),
            "{c:?} {b:?}"
        );
        // Unrelated names do not share a code.
        let d = kinds(MatchField::FamilyName, "Lovelace");
        assert!(
            !d.iter().any(|x| x.0 == "name.phonetic.v1" && b.contains(x)),
            "{d:?}"
        );
    }

    #[test]
    fn one_typo_apart_names_share_an_edit1_variant() {
        let shares = |a: &str, b: &str| {
            let a = kinds(MatchField::FamilyName, a);
            let b = kinds(MatchField::FamilyName, b);
            a.iter().any(|x| x.0 == "name.edit1.v1" && b.contains(x))
        };
        assert!(shares("Smith", "Smtih")); // transposition
        assert!(shares("Jones", "Jonas")); // substitution
        assert!(shares("Smith", "Smitth")); // insertion
        assert!(shares("Bennett", "Benett")); // deletion
        assert!(shares("O'Brien", "OBrien")); // punctuation
        assert!(!shares("Smith", "Jones"));
        assert!(!shares("Smith", "Smythe")); // two edits
        // Short names get no neighbourhood.
        assert!(
            !kinds(MatchField::FamilyName, "Li")
                .iter()
                .any(|x| x.0 == "name.edit1.v1")
        );
    }

    #[test]
    fn non_latin_names_do_not_panic() {
        // Found by the match_variants fuzz target.
        assert!(!kinds(MatchField::FamilyName, "SӔ").is_empty());
        assert!(
            kinds(MatchField::GivenName, "Дмитрий")
                .iter()
                .any(|x| x.0 == "name.folded.v1" && x.1 == "дмитрии")
        );
        assert!(
            !kinds(MatchField::GivenName, "Дмитрий")
                .iter()
                .any(|x| x.0 == "name.phonetic.v1")
        );
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1990-03-07"), Some((1990, 3, 7)));
        assert_eq!(parse_date("07/03/1990"), Some((1990, 3, 7)));
        assert_eq!(parse_date("07.03.1990"), Some((1990, 3, 7)));
        assert_eq!(parse_date("19900307"), Some((1990, 3, 7)));
        assert_eq!(parse_date("1990-02-30"), None);
        assert_eq!(parse_date("2000-02-29"), Some((2000, 2, 29)));
        assert_eq!(parse_date("1900-02-29"), None);
        assert_eq!(parse_date("soon"), None);
        assert!(has(
            MatchField::DateOfBirth,
            "1990-03-07",
            "dob.swapped.v1",
            "1990-07-03"
        ));
        assert!(has(
            MatchField::DateOfBirth,
            "1990-03-07",
            "dob.year.v1",
            "1990"
        ));
        // Day 25 cannot be a month: no swapped form. Equal day and month: none either.
        assert!(
            !kinds(MatchField::DateOfBirth, "1990-03-25")
                .iter()
                .any(|x| x.0 == "dob.swapped.v1")
        );
        assert!(
            !kinds(MatchField::DateOfBirth, "1990-03-03")
                .iter()
                .any(|x| x.0 == "dob.swapped.v1")
        );
        // A date that does not exist gets no date variant, only the
        // neighbourhood of its digits (a typo of one that does).
        let impossible = kinds(MatchField::DateOfBirth, "31/31/1990");
        assert!(
            impossible.iter().all(|x| x.0 == "dob.edit1.v1"),
            "{impossible:?}"
        );
        assert!(kinds(MatchField::DateOfBirth, "soon").is_empty());
    }

    fn share(field: MatchField, kind: &str, a: &str, b: &str) -> bool {
        let a = kinds(field, a);
        let b = kinds(field, b);
        a.iter().any(|x| x.0 == kind && b.contains(x))
    }

    #[test]
    fn one_edit_neighbourhoods_of_ids_dates_postcodes_and_cities() {
        let nid = |a, b| share(MatchField::NationalId, "nid.edit1.v1", a, b);
        assert!(nid("1234567", "1234568")); // one digit changed
        assert!(nid("1234567", "1243567")); // adjacent digits transposed
        assert!(nid("AB123456C", "AB12356C")); // a digit lost
        assert!(!nid("1234567", "1243576")); // two transpositions
        assert!(!nid("1234567", "7654321"));
        let dob = |a, b| share(MatchField::DateOfBirth, "dob.edit1.v1", a, b);
        assert!(dob("1990-03-07", "1990-03-01")); // day digit
        assert!(!dob("1990-03-17", "1909-03-71")); // two transpositions
        assert!(dob("1990-03-07", "1990-13-07")); // typo into no date at all
        assert!(dob("19900307", "07/03/1990")); // formats agree
        assert!(!dob("1990-03-07", "1991-04-07"));
        let pc = |a, b| share(MatchField::Postcode, "postcode.edit1.v1", a, b);
        assert!(pc("2615", "2651")); // transposed
        assert!(pc("SW1A 1AA", "SW1A 1AB"));
        assert!(!pc("2615", "3716"));
        assert!(
            kinds(MatchField::Postcode, "261")
                .iter()
                .all(|x| x.0 != "postcode.edit1.v1")
        );
        let city = |a, b| share(MatchField::City, "city.edit1.v1", a, b);
        assert!(city("Canberra", "Canbera"));
        assert!(city("Sydney", "Sydnye"));
        assert!(!city("Sydney", "Perth"));
    }

    #[test]
    fn near_addresses_share_the_street_with_a_house_number_one_edit_away() {
        let near = |a, b| share(MatchField::StreetAddress, "address.near.v1", a, b);
        assert!(near("12 High Street", "21 High St")); // transposed number
        assert!(near("12 High Street", "13 high st")); // one digit changed
        assert!(near("2 High Street", "12 High Street")); // a digit added
        assert!(near("7 Mill Lane", "7 Mill Lane"));
        assert!(!near("12 High Street", "12 Low Street"));
        assert!(!near("12 High Street", "45 High Street"));
        assert!(
            !kinds(MatchField::StreetAddress, "High Street")
                .iter()
                .any(|x| x.0 == "address.near.v1")
        );
        assert_eq!(house_number("flat 3 12 high st"), Some("3"));
        assert_eq!(house_number("12a high st"), Some("12a"));
    }

    #[test]
    fn compound_keys_survive_corrupted_identifiers_and_swapped_names() {
        let rec = |g: &'static str, f: &'static str, d: &'static str| {
            vec![
                (MatchField::GivenName, g),
                (MatchField::FamilyName, f),
                (MatchField::DateOfBirth, d),
                (MatchField::StreetAddress, "12 High Street"),
                (MatchField::Postcode, "sw1a 1aa"),
            ]
        };
        let a = compound_variants(&rec("Jane", "Smith", "1990-03-07"), false);
        let kinds_of = |v: &[Variant]| v.iter().map(|x| x.kind).collect::<Vec<_>>();
        assert_eq!(kinds_of(&a), COMPOUND_KINDS);
        // Swapped names: the sorted name pair agrees as stored, and the
        // query's swapped keys find the others.
        let b = compound_variants(&rec("Smith", "Jane", "1990-03-08"), false);
        assert!(
            a.iter()
                .any(|x| x.kind == "block.names.v1" && b.contains(x))
        );
        let b_swapped = compound_variants(&rec("Smith", "Jane", "1990-03-07"), true);
        assert!(
            a.iter()
                .any(|x| x.kind == "block.family_year.v1" && b_swapped.contains(x))
        );
        assert!(
            a.iter()
                .any(|x| x.kind == "block.given_mmdd.v1" && b_swapped.contains(x))
        );
        assert!(
            !b_swapped
                .iter()
                .any(|x| x.kind == "block.postcode_house.v1")
        );
        // Family name misspelt alike and a wrong year: given name and day still agree.
        let c = compound_variants(&rec("Jane", "Smyth", "1991-03-07"), false);
        assert!(
            a.iter()
                .any(|x| x.kind == "block.given_mmdd.v1" && c.contains(x))
        );
        assert!(
            a.iter()
                .any(|x| x.kind == "block.names.v1" && c.contains(x))
        );
        // Parts missing: no key that needs them.
        assert!(compound_variants(&[(MatchField::FamilyName, "Smith")], false).is_empty());
    }

    #[test]
    fn qgrams_are_padded_distinct_bigrams() {
        assert_eq!(
            qgrams(MatchField::GivenName, "Ann Lee"),
            ["_a", "_l", "an", "e_", "ee", "le", "n_", "nn"]
        );
        assert_eq!(
            qgrams(MatchField::StreetAddress, "1 Mill Road"),
            qgrams(MatchField::StreetAddress, "1 mill rd")
        );
        assert!(qgrams(MatchField::Phone, "07700 900123").is_empty());
        assert!(qgrams(MatchField::City, "--").is_empty());
    }

    #[test]
    fn ids_phones_emails_addresses() {
        assert!(has(
            MatchField::NationalId,
            "ab 12 34 56 c",
            "nid.last4.v1",
            "456C"
        ));
        assert!(has(
            MatchField::NationalId,
            "ab 12 34 56 c",
            "nid.full.v1",
            "AB123456C"
        ));
        assert!(has(
            MatchField::Phone,
            "07700 900123",
            "phone.e164.v1",
            "+447700900123"
        ));
        assert!(kinds(MatchField::Phone, "not a phone").is_empty());
        assert_eq!(
            canonical_email(" Ada.Lovelace+news@GoogleMail.com ").as_deref(),
            Some("adalovelace@gmail.com")
        );
        assert_eq!(
            canonical_email("ada.l+x@example.org").as_deref(),
            Some("ada.l@example.org")
        );
        assert_eq!(canonical_email("+only@example.org"), None);
        assert!(has(
            MatchField::StreetAddress,
            "12 High Street, Flat 3",
            "address.folded.v1",
            "12 high st apt 3"
        ));
        assert!(has(
            MatchField::StreetAddress,
            "12, High St.",
            "address.folded.v1",
            "12 high st"
        ));
        assert!(has(
            MatchField::Postcode,
            "sw1a 1aa",
            "postcode.folded.v1",
            "SW1A1AA"
        ));
        assert!(has(
            MatchField::City,
            "São Paulo",
            "city.folded.v1",
            "sao paulo"
        ));
    }

    #[test]
    fn every_produced_kind_is_declared() {
        let samples = [
            "William Bill",
            "O'Brien",
            "1990-03-07",
            "AB123456C",
            "+44 7700 900123",
            "ada@example.org",
            "12 High Street",
            "SW1A 1AA",
            "London",
        ];
        for f in MatchField::ALL {
            for s in samples {
                for var in kinds(f, s) {
                    assert!(super::kinds(f).contains(&var.0.as_str()), "{f:?} {var:?}");
                    let code = kind_code(f, &var.0).unwrap();
                    assert_eq!(
                        kind_of_code(f, code),
                        Some(super::kinds(f)[usize::from(code)])
                    );
                }
            }
        }
    }

    #[test]
    fn field_names_match_the_vault_catalogue() {
        for (i, f) in MatchField::ALL.into_iter().enumerate() {
            assert_eq!(MatchField::parse(f.name()), Some(f));
            assert_eq!(usize::from(f.code()), i);
            assert_eq!(MatchField::from_code(f.code()), Some(f));
        }
    }

    #[test]
    fn nickname_table_is_folded_and_sorted_by_canonical() {
        let t = crate::nicknames::TABLE;
        assert!(
            t.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no duplicate canonical names"
        );
        for (c, ds) in t {
            assert_eq!(fold(c), *c);
            assert!(ds.iter().all(|d| fold(d) == *d && d != c));
        }
    }
}
