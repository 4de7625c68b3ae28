//! A person's digital-ID claims, made from their catalogue fields at
//! issue time (docs/digital-id.md, "Claims").
//!
//! Claim names follow OpenID Connect where it has one (`given_name`,
//! `birthdate`, `phone_number`, `address` with `street_address`,
//! `postal_code`, `locality`, `country`); `national_id` keeps the
//! catalogue's name. `account_number` is never a claim: a bank account is
//! not an identity attribute, and a digital ID is shown to strangers.
//! `age_over_NN` booleans are derived from the date of birth on the day
//! of issue, so a relying party can learn "over 18" without the date.

use serde_json::{Map, Value};

use crate::subject::FieldName;

/// Ages for which an `age_over_NN` claim is issued.
pub const AGE_THRESHOLDS: [u32; 4] = [16, 18, 21, 65];

/// Every claim name a credential can carry, in a fixed order.
pub const CLAIM_NAMES: &[&str] = &[
    "given_name",
    "middle_name",
    "family_name",
    "birthdate",
    "age_over_16",
    "age_over_18",
    "age_over_21",
    "age_over_65",
    "email",
    "phone_number",
    "address",
    "national_id",
];

/// Whether `name` is a claim a credential can carry.
pub fn is_claim(name: &str) -> bool {
    CLAIM_NAMES.contains(&name)
}

/// The catalogue fields claim `name` is made from (what an issuance
/// policy sees in `context.fields`).
pub fn claim_fields(name: &str) -> &'static [&'static str] {
    match name {
        "given_name" => &["given_name"],
        "middle_name" => &["middle_name"],
        "family_name" => &["family_name"],
        "birthdate" | "age_over_16" | "age_over_18" | "age_over_21" | "age_over_65" => {
            &["date_of_birth"]
        }
        "email" => &["email"],
        "phone_number" => &["phone"],
        "address" => &["street_address", "postcode", "city", "country"],
        "national_id" => &["national_id"],
        _ => &[],
    }
}

/// The proleptic Gregorian date `(year, month, day)` of Unix second
/// `secs` in UTC (H. Hinnant's `civil_from_days`).
pub fn civil_date(secs: i64) -> (i64, u32, u32) {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is 1..=31 and m 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Whole years from `born` to `today` (birthdays on 29 February count on
/// 1 March in common years, as most jurisdictions do).
fn age(born: (u16, u8, u8), today: (i64, u32, u32)) -> i64 {
    let (by, bm, bd) = (i64::from(born.0), u32::from(born.1), u32::from(born.2));
    let (ty, tm, td) = today;
    let mut years = ty - by;
    if (tm, td) < (bm, bd) {
        years -= 1;
    }
    years
}

/// The claims of a person with `values` (their newest field values), as
/// `(name, value)` in [`CLAIM_NAMES`] order, for the day `today`. Only
/// claims in `wanted` are made (`None`: all). A date of birth that does
/// not parse gives neither `birthdate` nor the age claims.
pub fn person_claims(
    values: &[(FieldName, &str)],
    today: (i64, u32, u32),
    wanted: Option<&[String]>,
) -> Vec<(String, Value)> {
    let get = |name: &str| {
        values
            .iter()
            .find(|(f, _)| f.as_str() == name)
            .map(|(_, v)| *v)
    };
    let mut out: Vec<(String, Value)> = Vec::new();
    for (claim, field) in [
        ("given_name", "given_name"),
        ("middle_name", "middle_name"),
        ("family_name", "family_name"),
    ] {
        if let Some(v) = get(field) {
            out.push((claim.into(), v.into()));
        }
    }
    if let Some((y, m, d)) = get("date_of_birth").and_then(idvault_tokenizer::variants::parse_date)
    {
        out.push(("birthdate".into(), format!("{y:04}-{m:02}-{d:02}").into()));
        let years = age((y, m, d), today);
        for t in AGE_THRESHOLDS {
            out.push((format!("age_over_{t}"), (years >= i64::from(t)).into()));
        }
    }
    if let Some(v) = get("email") {
        out.push(("email".into(), v.into()));
    }
    if let Some(v) = get("phone") {
        out.push(("phone_number".into(), v.into()));
    }
    let mut address = Map::new();
    for (member, field) in [
        ("street_address", "street_address"),
        ("postal_code", "postcode"),
        ("locality", "city"),
        ("country", "country"),
    ] {
        if let Some(v) = get(field) {
            address.insert(member.into(), v.into());
        }
    }
    if !address.is_empty() {
        out.push(("address".into(), Value::Object(address)));
    }
    if let Some(v) = get("national_id") {
        out.push(("national_id".into(), v.into()));
    }
    if let Some(w) = wanted {
        out.retain(|(name, _)| w.iter().any(|x| x == name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str) -> FieldName {
        FieldName::parse(n).unwrap()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(civil_date(1_798_761_599), (2026, 12, 31));
        assert_eq!(civil_date(-86_400), (1969, 12, 31));
    }

    #[test]
    fn claims_from_fields() {
        let values = [
            (f("given_name"), "Ada"),
            (f("family_name"), "Lovelace"),
            (f("date_of_birth"), "10/12/2008"),
            (f("email"), "ada@example.org"),
            (f("city"), "London"),
            (f("postcode"), "W1"),
            (f("account_number"), "GB00"),
        ];
        // 2026-12-09: she turns 18 on the 10th.
        let c = person_claims(&values, (2026, 12, 9), None);
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "given_name",
                "family_name",
                "birthdate",
                "age_over_16",
                "age_over_18",
                "age_over_21",
                "age_over_65",
                "email",
                "address"
            ]
        );
        let get = |n: &str| c.iter().find(|(x, _)| x == n).map(|(_, v)| v.clone());
        assert_eq!(get("birthdate"), Some("2008-12-10".into()));
        assert_eq!(get("age_over_16"), Some(true.into()));
        assert_eq!(get("age_over_18"), Some(false.into()));
        let next_day = person_claims(&values, (2026, 12, 10), None);
        assert!(next_day.contains(&("age_over_18".into(), true.into())));
        assert_eq!(
            get("address"),
            Some(serde_json::json!({"postal_code": "W1", "locality": "London"}))
        );
        for (n, _) in &c {
            assert!(is_claim(n), "{n}");
        }
        let some = person_claims(&values, (2026, 12, 9), Some(&["email".into()]));
        assert_eq!(some, vec![("email".to_string(), "ada@example.org".into())]);
    }

    #[test]
    fn an_unparseable_date_gives_no_age() {
        let c = person_claims(&[(f("date_of_birth"), "soon")], (2026, 1, 1), None);
        assert!(c.is_empty());
    }
}
