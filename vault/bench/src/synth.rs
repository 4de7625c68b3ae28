//! Synthetic people and corrupted duplicates with known truth, for the
//! blind-matching benchmark (`idvault bench match`).
//!
//! Deterministic for a seed (SplitMix64), no RNG dependency. Names are
//! drawn with a skew (common names much more often than rare ones, as in
//! real populations), so chance agreements between different people on
//! names, years and cities occur at realistic rates.
//!
//! A duplicate is the same person as another system recorded them: one to
//! three corruptions from typos, transposed letters, nicknames, day/month
//! swapped, a wrong day, missing fields, a changed phone, a move to a new
//! address, plus formatting differences (case, accents, phone and date
//! styles, e-mail tags) that normalisation should absorb.
//!
//! That is the `default` [`Profile`] ([`duplicate`]). Harder profiles
//! ([`duplicate_with`]) add swapped names, typos in identifiers (national
//! id, postcode, house number) and in places (city, street), exactly three
//! corrupted fields, and `hardest`: up to three corrupted fields of any of
//! these kinds (with phonetic and OCR-like misspellings of names, as
//! FEBRL's generator makes them) and up to two more missing fields, always
//! keeping both names and one intact field so that a person could still
//! link the duplicate.

use idvault_tokenizer::nicknames;

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// An element, uniformly.
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs.get(self.below(xs.len())).copied().unwrap_or_default()
    }

    /// An element, skewed towards the front (index ~ n·u³): the first few
    /// names are common, the tail rare.
    pub fn pick_skewed<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let i = (u * u * u * xs.len() as f64) as usize;
        xs.get(i).copied().unwrap_or_default()
    }
}

const GIVEN: &[&str] = &[
    "James",
    "Mary",
    "John",
    "Elizabeth",
    "William",
    "Margaret",
    "David",
    "Sarah",
    "Robert",
    "Catherine",
    "Michael",
    "Emily",
    "Thomas",
    "Jennifer",
    "Richard",
    "Jessica",
    "Daniel",
    "Rebecca",
    "Christopher",
    "Susan",
    "Matthew",
    "Victoria",
    "Andrew",
    "Charlotte",
    "Joseph",
    "Patricia",
    "Edward",
    "Samantha",
    "Peter",
    "Katherine",
    "Anthony",
    "Deborah",
    "Benjamin",
    "Barbara",
    "Alexander",
    "Alexandra",
    "Nicholas",
    "Abigail",
    "Samuel",
    "Dorothy",
    "Jonathan",
    "Eleanor",
    "Timothy",
    "Frances",
    "Stephen",
    "Isabella",
    "Kenneth",
    "Angela",
    "Gregory",
    "Christina",
    "Henry",
    "Josephine",
    "Lawrence",
    "Olivia",
    "Leonard",
    "Sophie",
    "Philip",
    "Amelia",
    "Harold",
    "Grace",
    "Frederick",
    "Lucy",
    "Theodore",
    "Hannah",
    "Zachary",
    "Chloé",
    "Joshua",
    "Zoë",
    "Ronald",
    "Élodie",
    "Patrick",
    "Renée",
    "Nathaniel",
    "Søren",
    "Gabriel",
    "Anaïs",
    "Jacob",
    "Mohammed",
    "Priya",
    "Oluwaseun",
    "Wei",
    "Aisha",
    "Mateo",
    "Ingrid",
    "Dmitri",
    "Fatima",
    "Kwame",
    "Yuki",
    "Lars",
    "Siobhan",
    "Ciarán",
    "Niamh",
    "Rhys",
    "Bronwen",
    "Ahmed",
    "Leila",
    "François",
    "Agnès",
    "José",
    "María",
    "Jürgen",
    "Björn",
    "Małgorzata",
    "Tomasz",
    "Ana",
    "Luca",
    "Giulia",
    "Sven",
    "Astrid",
    "Ravi",
    "Ananya",
    "Hiroshi",
    "Mei",
    "Tariq",
    "Yasmin",
];

const FAMILY: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Wilkinson",
    "Foster",
    "Chapman",
    "Powell",
    "Webb",
    "Rogers",
    "Gray",
    "Mason",
    "Ali",
    "Hunt",
    "Hussain",
    "Campbell",
    "Matthews",
    "Owen",
    "Palmer",
    "Holmes",
    "Mills",
    "Barnes",
    "Knight",
    "Lloyd",
    "Butler",
    "Russell",
    "Barker",
    "Fisher",
    "Stevens",
    "Jenkins",
    "Murray",
    "Dixon",
    "Harvey",
    "Graham",
    "Pearson",
    "Ahmed",
    "Fletcher",
    "Walsh",
    "Kaur",
    "Gibson",
    "Howard",
    "Andrews",
    "Stewart",
    "Elliott",
    "Reynolds",
    "Saunders",
    "Payne",
    "Fox",
    "Ford",
    "Pearce",
    "Day",
    "Brooks",
    "West",
    "Lawrence",
    "Cole",
    "Atkinson",
    "Bradley",
    "Spencer",
    "Gill",
    "Dawson",
    "Ball",
    "Burton",
    "O'Brien",
    "Watts",
    "Rose",
    "Booth",
    "Perry",
    "Ryan",
    "Grant",
    "Wells",
    "Armstrong",
    "Francis",
    "Rees",
    "Hayes",
    "Hart",
    "Hudson",
    "Newman",
    "Barrett",
    "Webster",
    "Hunter",
    "Gregory",
    "Carr",
    "Lowe",
    "Page",
    "Marsh",
    "Riley",
    "Dunn",
    "Woods",
    "Parsons",
    "Berry",
    "Stone",
    "Reid",
    "Holland",
    "Hawkins",
    "Harding",
    "Porter",
    "Robertson",
    "Newton",
    "Oliver",
    "Reed",
    "Kennedy",
    "Williamson",
    "Bird",
    "Gardner",
    "Shah",
    "Dean",
    "Lane",
    "Cooke",
    "Bates",
    "Henderson",
    "Parry",
    "Burgess",
    "Bishop",
    "Walton",
    "Burns",
    "Nicholson",
    "Shepherd",
    "Ross",
    "Cross",
    "Long",
    "Freeman",
    "Warren",
    "Nicholls",
    "Hamilton",
    "Byrne",
    "Sutton",
    "McDonald",
    "Yates",
    "Hodgson",
    "Robson",
    "Curtis",
    "Hopkins",
    "O'Connor",
    "Harper",
    "Coleman",
    "Watkins",
    "Moss",
    "McCarthy",
    "Chambers",
    "O'Neill",
    "Griffin",
    "Sharp",
    "Hardy",
    "Wheeler",
    "Potter",
    "Osborne",
    "Johnston",
    "Gordon",
    "Doyle",
    "Wallace",
    "George",
    "Jordan",
    "Hutchinson",
    "Rowe",
    "Burke",
    "May",
    "Pritchard",
    "Gilbert",
    "Willis",
    "Higgins",
    "Read",
    "Miles",
    "Stevenson",
    "Stephenson",
    "Hammond",
    "Arnold",
    "Buckley",
    "Walters",
    "Hewitt",
    "Barber",
    "Nelson",
    "Slater",
    "Austin",
    "Sullivan",
    "Whitehead",
    "Mann",
    "Frost",
    "Lambert",
    "Stephens",
    "Blake",
    "Akhtar",
    "Lynch",
    "Goodwin",
    "Barton",
    "Woodward",
    "Thomson",
    "Cunningham",
    "Quinn",
    "Barnett",
    "Baxter",
    "Bibi",
    "Clayton",
    "Nash",
    "Greenwood",
    "Jennings",
    "Holt",
    "Kemp",
    "Poole",
    "Gallagher",
    "Bond",
    "Stokes",
    "Tucker",
    "Davidson",
    "Fowler",
    "Heath",
    "Norman",
    "Middleton",
    "Lawson",
    "Banks",
    "French",
    "Stanley",
    "Jarvis",
    "Gibbs",
    "Ferguson",
    "Hayward",
    "Carroll",
    "Douglas",
    "Dickinson",
    "Todd",
    "Barlow",
    "Peters",
    "Lucas",
    "Knowles",
    "Hartley",
    "Miah",
    "Simmons",
    "Morton",
    "Alexander",
    "Field",
    "Morrison",
    "Norris",
    "Townsend",
    "Preston",
    "Hancock",
    "Thornton",
    "Baldwin",
    "Burrows",
    "Briggs",
    "Storey",
    "Pugh",
    "Nguyen",
    "García",
    "Müller",
    "Kowalski",
    "Novák",
    "Fernández",
    "Rossi",
    "Dubois",
    "Søndergaard",
    "Nowak",
    "Ivanova",
    "Okafor",
    "Mensah",
    "Tanaka",
    "Chen",
    "Wang",
    "Kim",
    "Silva",
    "Santos",
    "Schneider",
    "Fischer",
];

const STREETS: &[&str] = &[
    "High",
    "Station",
    "Church",
    "Main",
    "Park",
    "Victoria",
    "Green",
    "Manor",
    "Kings",
    "Queens",
    "Mill",
    "Windsor",
    "New",
    "School",
    "York",
    "Alexandra",
    "Albert",
    "London",
    "Grange",
    "Springfield",
    "Chestnut",
    "Oak",
    "Elm",
    "Willow",
    "Beech",
    "Cedar",
    "Meadow",
    "Orchard",
    "Highfield",
    "Richmond",
    "Stanley",
    "Grove",
    "Hill",
    "Broadway",
    "Market",
    "Bridge",
    "Castle",
    "North",
    "South",
    "West",
    "East",
    "Cromwell",
    "Nelson",
    "Wellington",
    "Trinity",
    "Abbey",
];

const STREET_TYPES: &[&str] = &[
    "Street", "Road", "Avenue", "Lane", "Close", "Drive", "Crescent", "Place",
];

const CITIES: &[&str] = &[
    "London",
    "Birmingham",
    "Manchester",
    "Leeds",
    "Glasgow",
    "Liverpool",
    "Bristol",
    "Sheffield",
    "Edinburgh",
    "Cardiff",
    "Leicester",
    "Coventry",
    "Bradford",
    "Belfast",
    "Nottingham",
    "Kingston upon Hull",
    "Newcastle upon Tyne",
    "Stoke-on-Trent",
    "Southampton",
    "Derby",
    "Portsmouth",
    "Brighton",
    "Plymouth",
    "Northampton",
    "Reading",
    "Luton",
    "Wolverhampton",
    "Bolton",
    "Aberdeen",
    "Bournemouth",
    "Norwich",
    "Swindon",
    "Swansea",
    "Milton Keynes",
    "Southend-on-Sea",
    "Middlesbrough",
    "Peterborough",
    "Sunderland",
    "Warrington",
    "Oxford",
    "Cambridge",
    "York",
    "Exeter",
    "Dundee",
    "Inverness",
    "Bath",
];

const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "hotmail.co.uk",
    "btinternet.com",
    "example.org",
];

/// A synthetic person: `(catalogue field name, value)` pairs.
pub type Person = Vec<(&'static str, String)>;

fn letters(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + u8::try_from(rng.below(26)).unwrap_or(0)))
        .collect()
}

fn digits(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + u8::try_from(rng.below(10)).unwrap_or(0)))
        .collect()
}

fn ascii_lower(s: &str) -> String {
    idvault_tokenizer::variants::fold(s).replace(' ', "")
}

fn postcode(rng: &mut Rng) -> String {
    format!(
        "{}{} {}{}",
        letters(rng, 2),
        rng.below(99) + 1,
        rng.below(10),
        letters(rng, 2)
    )
}

fn phone(rng: &mut Rng) -> String {
    format!("07{} {}", digits(rng, 3), digits(rng, 6))
}

fn address(rng: &mut Rng) -> String {
    format!(
        "{} {} {}",
        rng.below(250) + 1,
        rng.pick(STREETS),
        rng.pick(STREET_TYPES)
    )
}

/// A new person. Names and date of birth are always present; the other
/// fields each with the probability a partner's records typically have.
pub fn person(rng: &mut Rng) -> Person {
    let given = rng.pick_skewed(GIVEN);
    let family = rng.pick_skewed(FAMILY);
    let (y, m, d) = (1940 + rng.below(66), rng.below(12) + 1, rng.below(28) + 1);
    let mut p: Person = vec![
        ("given_name", given.to_owned()),
        ("family_name", family.to_owned()),
        ("date_of_birth", format!("{y:04}-{m:02}-{d:02}")),
    ];
    if rng.chance(0.6) {
        p.push((
            "national_id",
            format!("{}{}{}", letters(rng, 2), digits(rng, 6), letters(rng, 1)),
        ));
    }
    if rng.chance(0.85) {
        p.push(("phone", phone(rng)));
    }
    if rng.chance(0.8) {
        let sep = rng.pick(&[".", "", "_"]);
        p.push((
            "email",
            format!(
                "{}{sep}{}{}@{}",
                ascii_lower(given),
                ascii_lower(family),
                // Real addresses are unique per person; with only two
                // digits, common names gave strangers the same address.
                rng.below(10_000),
                rng.pick(EMAIL_DOMAINS)
            ),
        ));
    }
    if rng.chance(0.85) {
        p.push(("street_address", address(rng)));
        p.push(("postcode", postcode(rng)));
    }
    if rng.chance(0.9) {
        p.push(("city", rng.pick_skewed(CITIES).to_owned()));
    }
    p
}

fn get<'a>(p: &'a Person, field: &str) -> Option<&'a String> {
    p.iter().find(|(f, _)| *f == field).map(|(_, v)| v)
}

fn set(p: &mut Person, field: &'static str, value: String) {
    match p.iter_mut().find(|(f, _)| *f == field) {
        Some(slot) => slot.1 = value,
        None => p.push((field, value)),
    }
}

fn typo(rng: &mut Rng, s: &str) -> String {
    let mut cs: Vec<char> = s.chars().collect();
    if cs.len() < 2 {
        return s.to_owned();
    }
    let i = 1 + rng.below(cs.len() - 1);
    if let Some(c) = cs.get_mut(i) {
        *c = char::from(b'a' + u8::try_from(rng.below(26)).unwrap_or(0));
    }
    cs.into_iter().collect()
}

fn transpose(rng: &mut Rng, s: &str) -> String {
    let mut cs: Vec<char> = s.chars().collect();
    if cs.len() < 3 {
        return s.to_owned();
    }
    let i = 1 + rng.below(cs.len() - 2);
    cs.swap(i, i + 1);
    cs.into_iter().collect()
}

/// Formatting another system might use: none of it changes who it is.
fn reformat(rng: &mut Rng, p: &mut Person) {
    for (f, v) in p.iter_mut() {
        if !rng.chance(0.5) {
            continue;
        }
        *v = match *f {
            "given_name" | "family_name" | "city" => {
                if rng.chance(0.5) {
                    v.to_uppercase()
                } else {
                    idvault_tokenizer::variants::fold(v)
                }
            }
            "phone" => format!("+44 {}", v.trim_start_matches('0')),
            "email" => match v.split_once('@') {
                Some((l, d)) if rng.chance(0.5) => format!("{l}+shop@{d}"),
                _ => v.to_uppercase(),
            },
            "date_of_birth" => {
                let parts: Vec<&str> = v.split('-').collect();
                match parts.as_slice() {
                    [y, m, d] => format!("{d}/{m}/{y}"),
                    _ => v.clone(),
                }
            }
            "street_address" => v
                .replace("Street", "St")
                .replace("Road", "Rd")
                .replace("Avenue", "Ave"),
            "postcode" => v.to_lowercase().replace(' ', ""),
            _ => v.clone(),
        };
    }
}

/// One corruption of the default profile: a name typo or transposition, a
/// nickname, a day/month swap or wrong day, a dropped field, a new phone, a
/// move to a new address, or no national id. Some draws change nothing
/// (a field that is absent, a name without nicknames).
fn default_corruption(rng: &mut Rng, p: &mut Person) {
    match rng.below(10) {
        0 => {
            if let Some(g) = get(p, "given_name").cloned() {
                set(p, "given_name", typo(rng, &g));
            }
        }
        1 => {
            if let Some(f) = get(p, "family_name").cloned() {
                set(p, "family_name", typo(rng, &f));
            }
        }
        2 => {
            let field = if rng.chance(0.5) {
                "given_name"
            } else {
                "family_name"
            };
            if let Some(v) = get(p, field).cloned() {
                set(p, field, transpose(rng, &v));
            }
        }
        3 => {
            if let Some(g) = get(p, "given_name").cloned() {
                let folded = idvault_tokenizer::variants::fold(&g);
                if let Some((_, dims)) = nicknames::TABLE.iter().find(|(c, _)| *c == folded)
                    && !dims.is_empty()
                {
                    set(p, "given_name", rng.pick(dims).to_owned());
                }
            }
        }
        4 | 5 => {
            if let Some(dob) = get(p, "date_of_birth").cloned()
                && let [y, m, d] = dob.split('-').collect::<Vec<_>>().as_slice()
            {
                let v = if rng.chance(0.6) {
                    format!("{y}-{d}-{m}")
                } else {
                    let day: usize = d.parse().unwrap_or(1);
                    format!("{y}-{m}-{:02}", day % 28 + 1)
                };
                // A swap of an impossible month is no date at all; keep it.
                if idvault_tokenizer::variants::parse_date(&v).is_some() {
                    set(p, "date_of_birth", v);
                }
            }
        }
        6 => {
            let droppable = [
                "national_id",
                "phone",
                "email",
                "street_address",
                "postcode",
                "city",
                "date_of_birth",
            ];
            let f = rng.pick(&droppable);
            p.retain(|(n, _)| *n != f);
        }
        7 => set(p, "phone", phone(rng)),
        8 => {
            if get(p, "street_address").is_some() {
                set(p, "street_address", address(rng));
                set(p, "postcode", postcode(rng));
                if rng.chance(0.5) {
                    set(p, "city", rng.pick_skewed(CITIES).to_owned());
                }
            }
        }
        _ => {
            p.retain(|(n, _)| *n != "national_id");
        }
    }
}

/// A corrupted duplicate of `original`: the `default` profile (one to
/// three default corruptions, then `reformat`).
pub fn duplicate(rng: &mut Rng, original: &Person) -> Person {
    let mut p = original.clone();
    let corruptions = 1 + rng.below(3);
    for _ in 0..corruptions {
        default_corruption(rng, &mut p);
    }
    reformat(rng, &mut p);
    p
}

/// A corruption profile of the matching benchmark: which errors a
/// duplicate carries besides the formatting differences of `reformat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// One to three default corruptions ([`duplicate`]); the profile of
    /// the earlier benchmark figures.
    Default,
    /// Given and family name exchanged, plus zero or one default corruption.
    SwappedNames,
    /// One or two typos in identifiers (national id, postcode, house
    /// number), plus zero or one default corruption.
    IdentifierTypos,
    /// A letter typo in the city and/or the street name, plus zero or one
    /// default corruption.
    PlaceTypos,
    /// Exactly three corrupted fields among names, date of birth,
    /// identifiers, contact details and places, one of which may be missing.
    MultiField,
    /// One to three corrupted fields drawn from every error type above
    /// (with phonetic and OCR-like misspellings and nicknames of names),
    /// plus zero to two missing fields. The goal F1 is measured on it.
    Hardest,
}

impl Profile {
    /// Every profile, mildest first.
    pub const ALL: [Profile; 6] = [
        Profile::Default,
        Profile::SwappedNames,
        Profile::IdentifierTypos,
        Profile::PlaceTypos,
        Profile::MultiField,
        Profile::Hardest,
    ];

    /// The profile's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::SwappedNames => "swapped-names",
            Profile::IdentifierTypos => "identifier-typos",
            Profile::PlaceTypos => "place-typos",
            Profile::MultiField => "multi-field",
            Profile::Hardest => "hardest",
        }
    }

    /// The profile named `s` (as [`Profile::name`] spells it, ignoring
    /// case and surrounding blanks; `_` may stand for `-`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().replace('_', "-");
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(&s))
    }

    /// One line on what the profile's duplicates carry, for the report and
    /// the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Profile::Default => {
                "1-3 of: name typo or transposition, nickname, day/month swap or wrong day, \
                 missing field, new phone, new address, no national id"
            }
            Profile::SwappedNames => "given and family name exchanged, plus 0-1 default corruption",
            Profile::IdentifierTypos => {
                "1-2 of: national id digit changed or two characters transposed, postcode \
                 character changed or transposed, house number digit changed or transposed; \
                 plus 0-1 default corruption"
            }
            Profile::PlaceTypos => {
                "a letter typo (substitution, insertion, deletion, transposition; never the \
                 first letter) in the city and/or street name, plus 0-1 default corruption"
            }
            Profile::MultiField => {
                "exactly 3 corrupted fields among: name typos, date of birth, national id, new \
                 phone, e-mail, address, postcode and city typos, a missing field"
            }
            Profile::Hardest => {
                "1-3 corrupted fields (multi-field errors, swapped names, phonetic and OCR-like \
                 misspellings, nicknames) plus 0-2 missing fields; names and one intact field \
                 always kept"
            }
        }
    }
}

/// A corrupted duplicate of `original` under `profile`, ending, like
/// [`duplicate`], with `reformat`. When a person lacks every field a
/// profile's characteristic error needs (no national id and no address
/// for `identifier-typos`, no city and no address for `place-typos`), a
/// default corruption stands in for it.
pub fn duplicate_with(rng: &mut Rng, original: &Person, profile: Profile) -> Person {
    if profile == Profile::Default {
        return duplicate(rng, original);
    }
    let mut p = original.clone();
    match profile {
        Profile::Default => {}
        Profile::SwappedNames => {
            // Swap first: the extra corruption then lands on the record as
            // the other system holds it.
            swap_names(&mut p);
            if rng.chance(0.5) {
                default_corruption(rng, &mut p);
            }
        }
        Profile::IdentifierTypos => {
            // The extra corruption first, so that a move or a dropped
            // national id cannot erase the profile's own errors.
            if rng.chance(0.5) {
                default_corruption(rng, &mut p);
            }
            identifier_typos(rng, &mut p);
        }
        Profile::PlaceTypos => {
            if rng.chance(0.5) {
                default_corruption(rng, &mut p);
            }
            place_typos(rng, &mut p);
        }
        Profile::MultiField => {
            let mut touched = Vec::new();
            corrupt_fields(rng, &mut p, &MULTI_FIELD_KINDS, 3, false, &mut touched);
        }
        Profile::Hardest => {
            let mut touched = Vec::new();
            let n = 1 + rng.below(3);
            corrupt_fields(rng, &mut p, &HARDEST_KINDS, n, true, &mut touched);
            for _ in 0..rng.below(3) {
                drop_field(rng, &mut p, &mut touched);
            }
        }
    }
    reformat(rng, &mut p);
    p
}

/// The profile-specific step of `identifier-typos`: one or two distinct
/// identifier typos among those the record allows.
fn identifier_typos(rng: &mut Rng, p: &mut Person) {
    #[derive(Clone, Copy)]
    enum Id {
        NationalIdDigit,
        NationalIdTranspose,
        Postcode,
        HouseNumber,
    }
    let mut kinds = [
        Id::NationalIdDigit,
        Id::NationalIdTranspose,
        Id::Postcode,
        Id::HouseNumber,
    ];
    shuffle(rng, &mut kinds);
    let want = 1 + rng.below(2);
    let mut done = 0;
    for kind in kinds {
        if done == want {
            break;
        }
        let changed = match kind {
            Id::NationalIdDigit => update(p, "national_id", |v| change_digit(rng, v, false)),
            Id::NationalIdTranspose => update(p, "national_id", |v| {
                transpose_adjacent(rng, v, |_, a, b| {
                    a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric()
                })
            }),
            Id::Postcode => update(p, "postcode", |v| postcode_typo(rng, v)),
            Id::HouseNumber => update(p, "street_address", |v| house_number_typo(rng, v)),
        };
        done += usize::from(changed);
    }
    if done == 0 {
        fallback(rng, p);
    }
}

/// The profile-specific step of `place-typos`: a letter typo in the city,
/// in the street name, or in both.
fn place_typos(rng: &mut Rng, p: &mut Person) {
    let city = get(p, "city").is_some();
    let street = get(p, "street_address").is_some_and(|a| street_word(a).is_some());
    let (in_city, in_street) = match (city, street) {
        (true, true) => match rng.below(3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        },
        other => other,
    };
    let mut changed = false;
    if in_city {
        changed |= update(p, "city", |v| letter_typo(rng, v));
    }
    if in_street {
        changed |= update(p, "street_address", |v| street_word_typo(rng, v));
    }
    if !changed {
        fallback(rng, p);
    }
}

/// Default corruptions until the record changes (a few tries): stands in
/// for a profile's own error when the record has nothing it could touch.
fn fallback(rng: &mut Rng, p: &mut Person) {
    let before = p.clone();
    for _ in 0..8 {
        default_corruption(rng, p);
        if *p != before {
            return;
        }
    }
}

/// Given and family name exchanged (true when that changed the record).
fn swap_names(p: &mut Person) -> bool {
    let (Some(g), Some(f)) = (
        get(p, "given_name").cloned(),
        get(p, "family_name").cloned(),
    ) else {
        return false;
    };
    set(p, "given_name", f.clone());
    set(p, "family_name", g.clone());
    f != g
}

/// A corruption of [`Profile::MultiField`] and [`Profile::Hardest`], each
/// touching its own field(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A typo in the given name (in `hardest` also a phonetic or OCR-like
    /// misspelling, or a nickname).
    GivenName,
    /// A typo in the family name (in `hardest` also phonetic or OCR-like).
    FamilyName,
    /// Given and family name exchanged: one corruption, two fields.
    SwapNames,
    /// A digit changed, day and month swapped, or the year off by one.
    DateOfBirth,
    /// A digit changed or two adjacent characters transposed.
    NationalId,
    /// Another phone number.
    Phone,
    /// A letter typo in the e-mail address's local part.
    Email,
    /// A typo in the street name or in the house number.
    Address,
    /// A character changed or two adjacent ones transposed.
    Postcode,
    /// A letter typo in the city.
    City,
    /// A field missing.
    Drop,
}

impl Kind {
    /// The fields the corruption changes (none fixed for [`Kind::Drop`]).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::GivenName => &["given_name"],
            Kind::FamilyName => &["family_name"],
            Kind::SwapNames => &["given_name", "family_name"],
            Kind::DateOfBirth => &["date_of_birth"],
            Kind::NationalId => &["national_id"],
            Kind::Phone => &["phone"],
            Kind::Email => &["email"],
            Kind::Address => &["street_address"],
            Kind::Postcode => &["postcode"],
            Kind::City => &["city"],
            Kind::Drop => &[],
        }
    }
}

/// The corruptions `multi-field` draws from.
const MULTI_FIELD_KINDS: [Kind; 10] = [
    Kind::GivenName,
    Kind::FamilyName,
    Kind::DateOfBirth,
    Kind::NationalId,
    Kind::Phone,
    Kind::Email,
    Kind::Address,
    Kind::Postcode,
    Kind::City,
    Kind::Drop,
];

/// The corruptions `hardest` draws from: those of `multi-field` and
/// swapped names.
const HARDEST_KINDS: [Kind; 11] = [
    Kind::GivenName,
    Kind::FamilyName,
    Kind::SwapNames,
    Kind::DateOfBirth,
    Kind::NationalId,
    Kind::Phone,
    Kind::Email,
    Kind::Address,
    Kind::Postcode,
    Kind::City,
    Kind::Drop,
];

/// The fields a duplicate may lose (never the names).
const DROPPABLE: [&str; 7] = [
    "date_of_birth",
    "national_id",
    "phone",
    "email",
    "street_address",
    "postcode",
    "city",
];

/// Present fields other than the names that no corruption has touched.
fn intact_fields(p: &Person, touched: &[&str]) -> usize {
    p.iter()
        .filter(|(f, _)| DROPPABLE.contains(f) && !touched.contains(f))
        .count()
}

/// Up to `n` corruptions of distinct fields, drawn in random order from
/// `kinds` among those the record allows, always leaving one field besides
/// the names intact (so that a person could still link the duplicate).
/// Records them in `touched`; returns how many were made.
fn corrupt_fields(
    rng: &mut Rng,
    p: &mut Person,
    kinds: &[Kind],
    n: usize,
    hard: bool,
    touched: &mut Vec<&'static str>,
) -> usize {
    let mut order = kinds.to_vec();
    shuffle(rng, &mut order);
    let mut done = 0;
    for kind in order {
        if done == n {
            break;
        }
        done += usize::from(corrupt(rng, p, kind, hard, touched));
    }
    done
}

/// One corruption of `kind`, unless its field is absent or already
/// corrupted, or it would leave no intact field besides the names. True
/// when the record changed.
fn corrupt(
    rng: &mut Rng,
    p: &mut Person,
    kind: Kind,
    hard: bool,
    touched: &mut Vec<&'static str>,
) -> bool {
    if kind == Kind::Drop {
        return drop_field(rng, p, touched);
    }
    let fields = kind.fields();
    if fields
        .iter()
        .any(|f| touched.contains(f) || get(p, f).is_none())
    {
        return false;
    }
    let intact_after = intact_fields(p, touched)
        .saturating_sub(fields.iter().filter(|f| DROPPABLE.contains(f)).count());
    if intact_after == 0 {
        return false;
    }
    let changed = match kind {
        Kind::GivenName => update(p, "given_name", |v| given_name_error(rng, v, hard)),
        Kind::FamilyName => update(p, "family_name", |v| name_misspelling(rng, v, hard)),
        Kind::SwapNames => swap_names(p),
        Kind::DateOfBirth => update(p, "date_of_birth", |v| date_error(rng, v)),
        Kind::NationalId => update(p, "national_id", |v| national_id_typo(rng, v)),
        Kind::Phone => update(p, "phone", |v| {
            let new = phone(rng);
            (new != v).then_some(new)
        }),
        Kind::Email => update(p, "email", |v| email_typo(rng, v)),
        Kind::Address => update(p, "street_address", |v| address_typo(rng, v)),
        Kind::Postcode => update(p, "postcode", |v| postcode_typo(rng, v)),
        Kind::City => update(p, "city", |v| letter_typo(rng, v)),
        Kind::Drop => false,
    };
    if changed {
        touched.extend_from_slice(fields);
    }
    changed
}

/// Drops one present, untouched field other than the names, keeping at
/// least one other intact; true when one was dropped.
fn drop_field(rng: &mut Rng, p: &mut Person, touched: &mut Vec<&'static str>) -> bool {
    if intact_fields(p, touched) < 2 {
        return false;
    }
    let candidates: Vec<&'static str> = DROPPABLE
        .into_iter()
        .filter(|f| !touched.contains(f) && get(p, f).is_some())
        .collect();
    let Some(f) = pick_from(rng, &candidates) else {
        return false;
    };
    p.retain(|(n, _)| *n != f);
    touched.push(f);
    true
}

/// Replaces `field`'s value with `change(value)` when that gives a
/// different value; true when it did.
fn update(
    p: &mut Person,
    field: &'static str,
    change: impl FnOnce(&str) -> Option<String>,
) -> bool {
    let Some(old) = get(p, field).cloned() else {
        return false;
    };
    match change(&old) {
        Some(new) if new != old => {
            set(p, field, new);
            true
        }
        _ => false,
    }
}

/// A uniformly chosen element of `xs`.
fn pick_from<T: Copy>(rng: &mut Rng, xs: &[T]) -> Option<T> {
    if xs.is_empty() {
        return None;
    }
    xs.get(rng.below(xs.len())).copied()
}

/// Fisher–Yates shuffle.
fn shuffle<T>(rng: &mut Rng, xs: &mut [T]) {
    for i in (1..xs.len()).rev() {
        let j = rng.below(i + 1);
        xs.swap(i, j);
    }
}

/// QWERTY keys next to the letter `c` (empty for other characters): the
/// letters a slipped finger hits instead.
fn keyboard_neighbours(c: char) -> &'static str {
    match c.to_ascii_lowercase() {
        'a' => "qwsz",
        'b' => "vghn",
        'c' => "xdfv",
        'd' => "serfcx",
        'e' => "wsdr",
        'f' => "drtgvc",
        'g' => "ftyhbv",
        'h' => "gyujnb",
        'i' => "ujko",
        'j' => "huikmn",
        'k' => "jiolm",
        'l' => "kop",
        'm' => "njk",
        'n' => "bhjm",
        'o' => "iklp",
        'p' => "ol",
        'q' => "wa",
        'r' => "edft",
        's' => "awedxz",
        't' => "rfgy",
        'u' => "yhji",
        'v' => "cfgb",
        'w' => "qase",
        'x' => "zsdc",
        'y' => "tghu",
        'z' => "asx",
        _ => "",
    }
}

/// `c` in the case of `like`.
fn with_case_of(c: char, like: char) -> char {
    if like.is_uppercase() {
        c.to_uppercase().next().unwrap_or(c)
    } else {
        c.to_lowercase().next().unwrap_or(c)
    }
}

/// A letter typed instead of `c`, in `c`'s case: mostly a QWERTY
/// neighbour, otherwise any other letter of a–z; never `c` itself.
fn mistyped(rng: &mut Rng, c: char) -> char {
    let near: Vec<char> = keyboard_neighbours(c).chars().collect();
    let lower = c.to_lowercase().next().unwrap_or(c);
    let typed = match pick_from(rng, &near) {
        Some(n) if rng.chance(0.8) => n,
        _ => {
            let l = char::from(b'a' + u8::try_from(rng.below(25)).unwrap_or(0));
            // 25 letters other than `lower`: skip over it.
            if lower.is_ascii_lowercase() && l >= lower {
                char::from(u8::try_from(u32::from(l) + 1).unwrap_or(b'z'))
            } else {
                l
            }
        }
    };
    with_case_of(typed, c)
}

/// A letter typo in `s` that never touches the first letter of a word:
/// a letter substituted (mostly by a QWERTY neighbour), a letter inserted
/// (a doubled letter or a neighbour of the one before), a letter deleted,
/// or two adjacent letters transposed. The result differs from `s` even
/// after folding case and accents; `None` when `s` has no letter to spare.
fn letter_typo(rng: &mut Rng, s: &str) -> Option<String> {
    let folded = idvault_tokenizer::variants::fold(s);
    for _ in 0..8 {
        let out = letter_typo_once(rng, s)?;
        if idvault_tokenizer::variants::fold(&out) != folded {
            return Some(out);
        }
    }
    None
}

/// One attempt of [`letter_typo`].
fn letter_typo_once(rng: &mut Rng, s: &str) -> Option<String> {
    let mut cs: Vec<char> = s.chars().collect();
    let letter = |i: usize| cs.get(i).is_some_and(|c| c.is_alphabetic());
    // Letters that do not start a word.
    let inner: Vec<usize> = (1..cs.len())
        .filter(|&i| letter(i) && letter(i - 1))
        .collect();
    if inner.is_empty() {
        return None;
    }
    // Insertion points right after a letter.
    let after: Vec<usize> = (1..=cs.len()).filter(|&j| letter(j - 1)).collect();
    let swaps: Vec<usize> = inner
        .iter()
        .copied()
        .filter(|&i| inner.contains(&(i + 1)) && cs.get(i) != cs.get(i + 1))
        .collect();
    let mut ops = vec![0, 1];
    if cs.len() >= 3 {
        ops.push(2);
    }
    if !swaps.is_empty() {
        ops.push(3);
    }
    match pick_from(rng, &ops)? {
        0 => {
            let i = pick_from(rng, &inner)?;
            let c = cs.get_mut(i)?;
            *c = mistyped(rng, *c);
        }
        1 => {
            let j = pick_from(rng, &after)?;
            let prev = *cs.get(j - 1)?;
            // In the case of the letters around (a title-case word's first
            // letter does not make the inserted one a capital).
            let like = if inner.contains(&(j - 1)) {
                prev
            } else {
                cs.get(j)
                    .copied()
                    .filter(|c| c.is_alphabetic())
                    .unwrap_or('a')
            };
            let c = if rng.chance(0.5) {
                prev
            } else {
                mistyped(rng, prev)
            };
            cs.insert(j, with_case_of(c, like));
        }
        2 => {
            let i = pick_from(rng, &inner)?;
            cs.remove(i);
        }
        _ => {
            let i = pick_from(rng, &swaps)?;
            cs.swap(i, i + 1);
        }
    }
    Some(cs.into_iter().collect())
}

/// Spelling by ear: `(from, to)` rewrites of a letter group, applied
/// anywhere but at the start of a word (after FEBRL's phonetic rules).
const PHONETIC: &[(&str, &str)] = &[
    ("ph", "f"),
    ("f", "ph"),
    ("ck", "k"),
    ("c", "k"),
    ("k", "c"),
    ("ee", "ea"),
    ("ea", "ee"),
    ("ie", "y"),
    ("y", "ie"),
    ("ey", "y"),
    ("ei", "ie"),
    ("ie", "ei"),
    ("ll", "l"),
    ("tt", "t"),
    ("nn", "n"),
    ("ss", "s"),
    ("mm", "m"),
    ("rr", "r"),
    ("s", "z"),
    ("z", "s"),
    ("th", "t"),
    ("ou", "ow"),
    ("ow", "ou"),
    ("ai", "ay"),
    ("ay", "ai"),
    ("x", "ks"),
    ("qu", "kw"),
    ("sch", "sh"),
    ("sh", "sch"),
    ("ine", "yn"),
    ("son", "sen"),
    ("sen", "son"),
];

/// Misreadings of a scanned form: `(from, to)` shapes an OCR engine
/// confuses (after FEBRL's OCR rules), anywhere but at the start of a word.
const OCR: &[(&str, &str)] = &[
    ("m", "rn"),
    ("rn", "m"),
    ("w", "vv"),
    ("d", "cl"),
    ("cl", "d"),
    ("l", "1"),
    ("i", "l"),
    ("l", "i"),
    ("o", "0"),
    ("e", "c"),
    ("c", "e"),
    ("h", "b"),
    ("b", "h"),
    ("u", "v"),
    ("v", "u"),
    ("g", "q"),
    ("a", "o"),
    ("ri", "n"),
];

/// `s` with one occurrence of a rule's `from` (case-insensitively, not at
/// the start of a word) rewritten to its `to`, in the case of the letter
/// it replaces; `None` when no rule applies.
fn rewrite(rng: &mut Rng, s: &str, rules: &[(&str, &str)]) -> Option<String> {
    let cs: Vec<char> = s.chars().collect();
    let lower: Vec<char> = cs
        .iter()
        .map(|c| c.to_lowercase().next().unwrap_or(*c))
        .collect();
    let mut at: Vec<(usize, usize, &str)> = Vec::new();
    for (from, to) in rules {
        let pattern: Vec<char> = from.chars().collect();
        for i in 1..lower.len() {
            let word_start = !lower.get(i - 1).is_some_and(|c| c.is_alphabetic());
            if !word_start && lower.get(i..i + pattern.len()) == Some(pattern.as_slice()) {
                at.push((i, pattern.len(), *to));
            }
        }
    }
    let (i, len, to) = pick_from(rng, &at)?;
    let like = cs.get(i).copied().unwrap_or('a');
    let out = cs
        .iter()
        .take(i)
        .copied()
        .chain(to.chars().map(|c| with_case_of(c, like)))
        .chain(cs.iter().skip(i + len).copied())
        .collect();
    Some(out)
}

/// A misspelt name: a letter typo, or in `hard` mode also a phonetic or
/// OCR-like misspelling (falling back to a letter typo when no rule
/// applies).
fn name_misspelling(rng: &mut Rng, name: &str, hard: bool) -> Option<String> {
    let rewritten = if hard {
        match rng.below(5) {
            0 => rewrite(rng, name, PHONETIC),
            1 => rewrite(rng, name, OCR),
            _ => None,
        }
    } else {
        None
    };
    rewritten.or_else(|| letter_typo(rng, name))
}

/// A wrong given name: a misspelling, or in `hard` mode sometimes a
/// nickname (when the name has one).
fn given_name_error(rng: &mut Rng, name: &str, hard: bool) -> Option<String> {
    if hard && rng.chance(0.2) {
        let folded = idvault_tokenizer::variants::fold(name);
        if let Some((_, dims)) = nicknames::TABLE.iter().find(|(c, _)| *c == folded)
            && !dims.is_empty()
        {
            return Some(rng.pick(dims).to_owned());
        }
    }
    name_misspelling(rng, name, hard)
}

/// `s` with one ASCII digit replaced by a different digit (the same
/// length); `nonzero_first` keeps a leading digit from becoming 0. `None`
/// when `s` has no digit.
fn change_digit(rng: &mut Rng, s: &str, nonzero_first: bool) -> Option<String> {
    let mut cs: Vec<char> = s.chars().collect();
    let at: Vec<usize> = (0..cs.len())
        .filter(|&i| cs.get(i).is_some_and(char::is_ascii_digit))
        .collect();
    let i = pick_from(rng, &at)?;
    let current = cs.get(i).copied()?;
    let others: Vec<char> = ('0'..='9')
        .filter(|&d| d != current && !(nonzero_first && i == 0 && d == '0'))
        .collect();
    let new = pick_from(rng, &others)?;
    *cs.get_mut(i)? = new;
    Some(cs.into_iter().collect())
}

/// `s` with two adjacent characters swapped: a pair `(i, i + 1)` of
/// different characters that `ok(i, a, b)` accepts. `None` when there is
/// no such pair.
fn transpose_adjacent(
    rng: &mut Rng,
    s: &str,
    ok: impl Fn(usize, char, char) -> bool,
) -> Option<String> {
    let mut cs: Vec<char> = s.chars().collect();
    let pairs: Vec<usize> = cs
        .windows(2)
        .enumerate()
        .filter_map(|(i, w)| match w {
            [a, b] if a != b && ok(i, *a, *b) => Some(i),
            _ => None,
        })
        .collect();
    let i = pick_from(rng, &pairs)?;
    cs.swap(i, i + 1);
    Some(cs.into_iter().collect())
}

/// `s` with one letter or digit changed: a letter to another (mostly a
/// QWERTY neighbour, same case), a digit to another digit.
fn change_alphanumeric(rng: &mut Rng, s: &str) -> Option<String> {
    let mut cs: Vec<char> = s.chars().collect();
    let at: Vec<usize> = (0..cs.len())
        .filter(|&i| cs.get(i).is_some_and(char::is_ascii_alphanumeric))
        .collect();
    let i = pick_from(rng, &at)?;
    let current = cs.get(i).copied()?;
    let new = if current.is_ascii_digit() {
        let others: Vec<char> = ('0'..='9').filter(|&d| d != current).collect();
        pick_from(rng, &others)?
    } else {
        mistyped(rng, current)
    };
    *cs.get_mut(i)? = new;
    Some(cs.into_iter().collect())
}

/// A national id typo: one digit changed (the same length) or two
/// adjacent characters transposed.
fn national_id_typo(rng: &mut Rng, id: &str) -> Option<String> {
    let transposed = if rng.chance(0.5) {
        transpose_adjacent(rng, id, |_, a, b| {
            a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric()
        })
    } else {
        None
    };
    transposed.or_else(|| change_digit(rng, id, false))
}

/// A postcode typo: one character changed or two adjacent ones
/// transposed.
fn postcode_typo(rng: &mut Rng, code: &str) -> Option<String> {
    let transposed = if rng.chance(0.5) {
        transpose_adjacent(rng, code, |_, a, b| {
            a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric()
        })
    } else {
        None
    };
    transposed.or_else(|| change_alphanumeric(rng, code))
}

/// A typo in the house number (the leading number of a street address):
/// one digit changed, or its two digits transposed when it has two or
/// more; never a leading zero. `None` without a house number.
fn house_number_typo(rng: &mut Rng, addr: &str) -> Option<String> {
    let split = addr
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(addr.len());
    let (number, rest) = addr.split_at_checked(split)?;
    if number.is_empty() {
        return None;
    }
    let transposed = if number.len() >= 2 && rng.chance(0.5) {
        transpose_adjacent(rng, number, |i, _, b| !(i == 0 && b == '0'))
    } else {
        None
    };
    let new = transposed.or_else(|| change_digit(rng, number, true))?;
    Some(format!("{new}{rest}"))
}

/// The position of the street name in a street address's blank-separated
/// words: the first word that starts with a letter.
fn street_word(addr: &str) -> Option<usize> {
    addr.split(' ')
        .position(|w| w.chars().next().is_some_and(char::is_alphabetic))
}

/// A letter typo in the street name word of a street address.
fn street_word_typo(rng: &mut Rng, addr: &str) -> Option<String> {
    let at = street_word(addr)?;
    let mut words: Vec<String> = addr.split(' ').map(str::to_owned).collect();
    let word = words.get_mut(at)?;
    *word = letter_typo(rng, word)?;
    Some(words.join(" "))
}

/// A typo in a street address: in the street name or in the house number.
fn address_typo(rng: &mut Rng, addr: &str) -> Option<String> {
    if rng.chance(0.5) {
        street_word_typo(rng, addr).or_else(|| house_number_typo(rng, addr))
    } else {
        house_number_typo(rng, addr).or_else(|| street_word_typo(rng, addr))
    }
}

/// A letter typo in the local part of an e-mail address.
fn email_typo(rng: &mut Rng, email: &str) -> Option<String> {
    let (local, domain) = email.split_once('@')?;
    Some(format!("{}@{domain}", letter_typo(rng, local)?))
}

/// A wrong date of birth, still a valid date in ISO form: a digit changed,
/// day and month swapped (when the day can be a month), or the year off by
/// one.
fn date_error(rng: &mut Rng, dob: &str) -> Option<String> {
    let parse = idvault_tokenizer::variants::parse_date;
    let (y, m, d) = parse(dob)?;
    let iso = |y: u16, m: u8, d: u8| format!("{y:04}-{m:02}-{d:02}");
    let original = iso(y, m, d);
    let plausible = |s: &str| parse(s).is_some_and(|(y, _, _)| (1900..=2030).contains(&y));
    for _ in 0..16 {
        let candidate = match rng.below(3) {
            0 => change_digit(rng, &original, false),
            1 => (d <= 12).then(|| iso(y, d, m)),
            _ => Some(iso(if rng.chance(0.5) { y + 1 } else { y - 1 }, m, d)),
        };
        if let Some(c) = candidate
            && c != original
            && plausible(&c)
        {
            return Some(c);
        }
    }
    let next_year = iso(y + 1, m, d);
    plausible(&next_year).then_some(next_year)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed_and_always_named() {
        let a: Vec<Person> = (0..50)
            .map({
                let mut r = Rng::new(7);
                move |_| person(&mut r)
            })
            .collect();
        let b: Vec<Person> = (0..50)
            .map({
                let mut r = Rng::new(7);
                move |_| person(&mut r)
            })
            .collect();
        assert_eq!(a, b);
        for p in &a {
            assert!(get(p, "given_name").is_some() && get(p, "family_name").is_some());
            assert!(
                idvault_tokenizer::variants::parse_date(get(p, "date_of_birth").unwrap()).is_some()
            );
        }
    }

    #[test]
    fn duplicates_differ_but_keep_a_name() {
        let mut r = Rng::new(3);
        let mut changed = 0;
        for _ in 0..200 {
            let p = person(&mut r);
            let d = duplicate(&mut r, &p);
            changed += usize::from(d != p);
            assert!(get(&d, "family_name").is_some());
        }
        assert!(changed > 190, "{changed}");
    }

    /// A person's fields as matching would compare them: the formatting
    /// differences of `reformat` undone.
    fn canon(p: &Person) -> Vec<(&'static str, String)> {
        use idvault_tokenizer::variants::{fold, parse_date};
        let mut out: Vec<(&'static str, String)> = p
            .iter()
            .map(|(f, v)| {
                let v = match *f {
                    "given_name" | "family_name" | "city" => fold(v),
                    "phone" => {
                        let d: String = v.chars().filter(char::is_ascii_digit).collect();
                        match d.strip_prefix("44") {
                            Some(rest) => format!("0{rest}"),
                            None => d,
                        }
                    }
                    "email" => v.to_lowercase().replace("+shop@", "@"),
                    "date_of_birth" => format!("{:?}", parse_date(v)),
                    "street_address" => fold(v)
                        .split(' ')
                        .map(|w| match w {
                            "st" => "street",
                            "rd" => "road",
                            "ave" => "avenue",
                            w => w,
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    "postcode" => v.to_lowercase().replace(' ', ""),
                    _ => v.clone(),
                };
                (*f, v)
            })
            .collect();
        out.sort();
        out
    }

    /// Originals and their duplicates under `profile`.
    fn pairs(seed: u64, n: usize, profile: Profile) -> Vec<(Person, Person)> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| {
                let p = person(&mut r);
                let d = duplicate_with(&mut r, &p, profile);
                (p, d)
            })
            .collect()
    }

    #[test]
    fn profiles_parse_their_names() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.name()), Some(p));
            assert!(!p.describe().is_empty());
        }
        assert_eq!(Profile::parse(" Multi_Field "), Some(Profile::MultiField));
        assert_eq!(Profile::parse("impossible"), None);
    }

    #[test]
    fn default_profile_is_duplicate() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        for _ in 0..200 {
            let p = person(&mut a);
            let q = person(&mut b);
            assert_eq!(
                duplicate_with(&mut a, &p, Profile::Default),
                duplicate(&mut b, &q)
            );
        }
    }

    #[test]
    fn every_profile_is_deterministic_and_changes_the_record() {
        for profile in Profile::ALL {
            let a = pairs(21, 300, profile);
            assert_eq!(a, pairs(21, 300, profile), "{}", profile.name());
            // The default profile's figures predate this test: some of its
            // corruptions find nothing to change, so it is held only to a
            // raw difference (formatting included), the others to a real one.
            let changed = a
                .iter()
                .filter(|(p, d)| match profile {
                    Profile::Default => p != d,
                    _ => canon(p) != canon(d),
                })
                .count();
            assert!(changed >= 285, "{}: {changed}/300", profile.name());
        }
    }

    #[test]
    fn swapped_names_swap() {
        use idvault_tokenizer::variants::fold;
        let swapped = pairs(22, 300, Profile::SwappedNames)
            .iter()
            .filter(|(p, d)| {
                fold(get(d, "family_name").unwrap()) == fold(get(p, "given_name").unwrap())
            })
            .count();
        assert!(swapped >= 270, "{swapped}/300");
    }

    #[test]
    fn identifier_typos_keep_national_id_lengths() {
        let mut changed = 0;
        for (p, d) in pairs(23, 300, Profile::IdentifierTypos) {
            if let (Some(a), Some(b)) = (get(&p, "national_id"), get(&d, "national_id")) {
                assert_eq!(a.chars().count(), b.chars().count(), "{a} {b}");
                changed += usize::from(a != b);
            }
        }
        assert!(changed > 50, "{changed}");
    }

    #[test]
    fn place_typos_misspell_places() {
        use idvault_tokenizer::variants::fold;
        let mut misspelt = 0;
        for (p, d) in pairs(24, 300, Profile::PlaceTypos) {
            // A misspelt city or street name: not one of the catalogue's.
            let city = get(&d, "city").is_some_and(|c| !CITIES.contains(&c.as_str()));
            let street = get(&d, "street_address")
                .is_some_and(|a| a.split(' ').nth(1).is_some_and(|w| !STREETS.contains(&w)));
            misspelt += usize::from(city || street);
            if let (Some(a), Some(b)) = (get(&p, "city"), get(&d, "city")) {
                assert!(fold(a) == fold(b) || city || CITIES.contains(&b.as_str()));
            }
        }
        assert!(misspelt >= 270, "{misspelt}/300");
    }

    /// Initials of each word, folded.
    fn initials(s: &str) -> Vec<char> {
        idvault_tokenizer::variants::fold(s)
            .split(' ')
            .filter_map(|w| w.chars().next())
            .collect()
    }

    #[test]
    fn letter_typos_keep_initials_and_stay_close() {
        use idvault_tokenizer::variants::fold;
        let mut r = Rng::new(27);
        for place in CITIES.iter().chain(STREETS).chain(GIVEN).chain(FAMILY) {
            for _ in 0..20 {
                let Some(t) = letter_typo(&mut r, place) else {
                    continue;
                };
                assert_ne!(fold(&t), fold(place), "{place} {t}");
                assert_eq!(initials(&t), initials(place), "{place} {t}");
                let diff = t.chars().count().abs_diff(place.chars().count());
                assert!(diff <= 1, "{place} {t}");
            }
        }
    }

    #[test]
    fn multi_field_corrupts_three_fields() {
        for (p, d) in pairs(25, 300, Profile::MultiField) {
            if p.len() < 4 {
                continue;
            }
            let (cp, cd) = (canon(&p), canon(&d));
            let differing = cp.iter().filter(|f| !cd.contains(f)).count();
            assert_eq!(differing, 3, "{p:?} {d:?}");
        }
    }

    #[test]
    fn hardest_keeps_names_and_one_more_field() {
        let (mut fields, mut n) = (0, 0);
        for (p, d) in pairs(26, 1000, Profile::Hardest) {
            assert!(get(&d, "given_name").is_some() && get(&d, "family_name").is_some());
            let kept = canon(&p);
            let intact = canon(&d)
                .into_iter()
                .filter(|f| !f.0.ends_with("_name") && kept.contains(f))
                .count();
            assert!(intact >= 1, "{p:?} {d:?}");
            fields += d.len();
            n += 1;
        }
        assert!(fields < n * 9);
    }

    #[test]
    fn helpers_change_what_they_promise() {
        let mut r = Rng::new(9);
        for _ in 0..500 {
            let id = change_digit(&mut r, "AB123456C", false).unwrap();
            assert_eq!(id.len(), 9);
            assert_ne!(id, "AB123456C");
            let n = house_number_typo(&mut r, "10 High Street").unwrap();
            assert!(!n.starts_with('0') && n.ends_with(" High Street"), "{n}");
            assert_ne!(n, "10 High Street");
            let t = letter_typo(&mut r, "London").unwrap();
            assert!(t.starts_with('L') && t != "London", "{t}");
            let s = street_word_typo(&mut r, "7 Oak Lane").unwrap();
            assert!(s.starts_with("7 O") && s.ends_with(" Lane"), "{s}");
        }
        assert_eq!(transpose_adjacent(&mut r, "aaa", |_, _, _| true), None);
        assert_eq!(letter_typo(&mut r, "A"), None);
    }
}
