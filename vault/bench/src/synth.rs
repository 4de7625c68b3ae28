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

/// A corrupted duplicate of `original`.
pub fn duplicate(rng: &mut Rng, original: &Person) -> Person {
    let mut p = original.clone();
    let corruptions = 1 + rng.below(3);
    for _ in 0..corruptions {
        match rng.below(10) {
            0 => {
                if let Some(g) = get(&p, "given_name").cloned() {
                    set(&mut p, "given_name", typo(rng, &g));
                }
            }
            1 => {
                if let Some(f) = get(&p, "family_name").cloned() {
                    set(&mut p, "family_name", typo(rng, &f));
                }
            }
            2 => {
                let field = if rng.chance(0.5) {
                    "given_name"
                } else {
                    "family_name"
                };
                if let Some(v) = get(&p, field).cloned() {
                    set(&mut p, field, transpose(rng, &v));
                }
            }
            3 => {
                if let Some(g) = get(&p, "given_name").cloned() {
                    let folded = idvault_tokenizer::variants::fold(&g);
                    if let Some((_, dims)) = nicknames::TABLE.iter().find(|(c, _)| *c == folded)
                        && !dims.is_empty()
                    {
                        set(&mut p, "given_name", rng.pick(dims).to_owned());
                    }
                }
            }
            4 | 5 => {
                if let Some(dob) = get(&p, "date_of_birth").cloned()
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
                        set(&mut p, "date_of_birth", v);
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
            7 => set(&mut p, "phone", phone(rng)),
            8 => {
                if get(&p, "street_address").is_some() {
                    set(&mut p, "street_address", address(rng));
                    set(&mut p, "postcode", postcode(rng));
                    if rng.chance(0.5) {
                        set(&mut p, "city", rng.pick_skewed(CITIES).to_owned());
                    }
                }
            }
            _ => {
                p.retain(|(n, _)| *n != "national_id");
            }
        }
    }
    reformat(rng, &mut p);
    p
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
}
