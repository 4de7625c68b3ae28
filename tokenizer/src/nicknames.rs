//! Nickname and diminutive table for given names.
//!
//! Source: compiled by the idvault team from common English-language
//! diminutives (the pairs every person-matching system ships, e.g. the
//! kind listed in the US Census and genealogy name-variant lists); each row
//! is `canonical: diminutives…`. Entries are folded (lower case, no
//! accents). A diminutive that belongs to several names (e.g. "alex")
//! maps to every canonical name it appears under.

/// `(canonical, diminutives)` rows.
pub const TABLE: &[(&str, &[&str])] = &[
    ("abigail", &["abby", "abbie", "gail"]),
    ("albert", &["al", "bert", "bertie"]),
    ("alexander", &["alex", "alec", "sandy", "xander", "lex"]),
    ("alexandra", &["alex", "alexa", "sandra", "sandy", "lexi"]),
    ("alfred", &["alf", "alfie", "fred", "freddie"]),
    ("andrew", &["andy", "drew", "andie"]),
    ("angela", &["angie", "angel"]),
    ("anthony", &["tony", "ant"]),
    ("barbara", &["barb", "barbie", "babs"]),
    ("benjamin", &["ben", "benny", "benji"]),
    (
        "catherine",
        &["cathy", "kate", "katie", "cat", "kath", "kay"],
    ),
    ("charles", &["charlie", "chuck", "chas", "chaz", "chip"]),
    ("charlotte", &["charlie", "lottie", "lotte"]),
    ("christina", &["chris", "tina", "chrissy", "kristy"]),
    ("christopher", &["chris", "kit", "topher", "christie"]),
    ("daniel", &["dan", "danny"]),
    ("david", &["dave", "davy", "davey"]),
    ("deborah", &["deb", "debbie", "debby"]),
    ("dorothy", &["dot", "dottie", "dolly", "dora"]),
    ("edward", &["ed", "eddie", "ted", "teddy", "ned"]),
    ("eleanor", &["ellie", "nell", "nora", "elle"]),
    (
        "elizabeth",
        &[
            "liz", "lizzie", "beth", "betty", "betsy", "eliza", "libby", "bess", "elsie", "lisa",
        ],
    ),
    ("emily", &["em", "emmy", "millie"]),
    ("frances", &["fran", "frankie", "fanny"]),
    ("francis", &["frank", "frankie", "fran"]),
    ("frederick", &["fred", "freddie", "freddy", "fritz"]),
    ("gabriel", &["gabe", "gabby"]),
    ("gregory", &["greg", "gregg"]),
    ("harold", &["harry", "hal"]),
    ("henry", &["harry", "hank", "hal"]),
    ("isabella", &["bella", "izzy", "isa"]),
    ("jacob", &["jake", "jay"]),
    ("james", &["jim", "jimmy", "jamie", "jem"]),
    ("jennifer", &["jen", "jenny", "jenn"]),
    ("jessica", &["jess", "jessie"]),
    ("john", &["jack", "johnny", "jon"]),
    ("jonathan", &["jon", "jonny", "nathan"]),
    ("joseph", &["joe", "joey", "jo"]),
    ("josephine", &["jo", "josie", "jose"]),
    ("joshua", &["josh"]),
    (
        "katherine",
        &["kathy", "kate", "katie", "kat", "kay", "kitty"],
    ),
    ("kenneth", &["ken", "kenny"]),
    ("lawrence", &["larry", "laurie"]),
    ("leonard", &["leo", "len", "lenny"]),
    (
        "margaret",
        &[
            "maggie", "meg", "peggy", "marge", "madge", "greta", "daisy", "rita",
        ],
    ),
    ("matthew", &["matt", "matty"]),
    ("michael", &["mike", "mikey", "mick", "micky"]),
    ("nathaniel", &["nate", "nat", "nathan"]),
    ("nicholas", &["nick", "nicky", "nico"]),
    ("patricia", &["pat", "patty", "trish", "tricia"]),
    ("patrick", &["pat", "paddy"]),
    ("peter", &["pete"]),
    ("philip", &["phil", "pip"]),
    ("rebecca", &["becky", "becca", "bex"]),
    ("richard", &["rich", "rick", "ricky", "dick", "richie"]),
    ("robert", &["rob", "robbie", "bob", "bobby", "bert"]),
    ("ronald", &["ron", "ronnie"]),
    ("samantha", &["sam", "sammy"]),
    ("samuel", &["sam", "sammy"]),
    ("stephen", &["steve", "stevie"]),
    ("steven", &["steve", "stevie"]),
    ("susan", &["sue", "susie", "suzy"]),
    ("theodore", &["theo", "ted", "teddy"]),
    ("thomas", &["tom", "tommy"]),
    ("timothy", &["tim", "timmy"]),
    ("victoria", &["vicky", "vic", "tori"]),
    ("william", &["will", "bill", "billy", "willy", "liam"]),
    ("zachary", &["zach", "zack"]),
];

/// The canonical names a folded given name stands for: itself when it is a
/// canonical name, every canonical name listing it as a diminutive, or
/// nothing when the table does not know it.
pub fn canonical_forms(folded: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = TABLE
        .iter()
        .filter(|(c, d)| *c == folded || d.contains(&folded))
        .map(|(c, _)| *c)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
