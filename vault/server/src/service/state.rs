//! State the use cases share inside one process, built at start: the
//! blind-matching keyrings and rate limiters, and the cross-reference
//! lookup cache. It holds values only; it never calls a use case (the
//! `Vault` owns it, the use cases read it).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use idvault_core::crypto::HASH_LEN;
use idvault_core::matching::{MatchKeyring, MatchModel};
use idvault_tokenizer::NormalizeOptions;

use crate::config::PartnerRegistry;

/// Blind-matching state of a vault: settings, derived keyrings, limiters.
#[derive(Debug)]
pub(crate) struct MatchState {
    pub(crate) opts: NormalizeOptions,
    pub(crate) domains: Vec<String>,
    pub(crate) keyrings: Mutex<HashMap<(String, u32), Arc<MatchKeyring>>>,
    pub(crate) limiters: HashMap<String, DefaultDirectRateLimiter>,
    /// Learned weights per domain (absent: the hand-set table).
    pub(crate) models: RwLock<HashMap<String, Arc<MatchModel>>>,
    /// Records held by one-to-one Link jobs until their end, across all
    /// partners (a permit each; see
    /// [`super::matching::MAX_HELD_LINK_RECORDS`]).
    pub(crate) held_link_records: Arc<tokio::sync::Semaphore>,
}

impl MatchState {
    pub(crate) fn new(registry: &PartnerRegistry, default_country_code: Option<u16>) -> Self {
        let limiters = registry
            .partners()
            .iter()
            .map(|p| {
                let per = NonZeroU32::new(p.match_rate.per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(p.match_rate.burst).unwrap_or(NonZeroU32::MIN);
                (
                    p.name.clone(),
                    RateLimiter::direct(Quota::per_second(per).allow_burst(burst)),
                )
            })
            .collect();
        Self {
            opts: NormalizeOptions {
                default_country_code,
            },
            domains: registry.match_domains(),
            keyrings: Mutex::new(HashMap::new()),
            limiters,
            models: RwLock::new(HashMap::new()),
            held_link_records: Arc::new(tokio::sync::Semaphore::new(
                super::matching::MAX_HELD_LINK_RECORDS,
            )),
        }
    }
}

/// Entries one partner's part of the lookup cache keeps before that part
/// is emptied: one partner's lookups (a stream of unlinked junk, say)
/// never evict another partner's entries.
const CACHE_LIMIT_PER_PARTNER: usize = 250_000;

/// Identifier → canonical entity token, by current-version blind index.
///
/// Entries are tagged with their partner's cross-reference generation,
/// read before the lookup. A partner's imports that change links bump its
/// generation in the database (so every replica sees it) and clear its
/// part of this cache locally; a lookup that raced with such an import
/// does not insert its possibly pre-merge answer. Another partner's
/// imports never empty this partner's part.
#[derive(Debug, Default)]
pub(crate) struct XrefCache(RwLock<HashMap<String, CachePart>>);

/// One partner's cross-reference namespace in the cache: blind index →
/// token, tagged with the partner's generation. `None` records "linked to
/// no entity" (any import of the partner that adds links bumps its
/// generation, which empties its part). Partners come from the registry,
/// so the number of parts is bounded too.
#[derive(Debug, Default)]
struct CachePart {
    generation: i64,
    entries: HashMap<[u8; HASH_LEN], Option<String>>,
}

impl XrefCache {
    /// Drops `owner`'s entries and forgets its generation.
    pub(crate) fn clear_owner(&self, owner: &str) {
        if let Ok(mut c) = self.0.write()
            && let Some(part) = c.get_mut(owner)
        {
            part.entries.clear();
            part.generation = -1;
        }
    }

    /// Makes `owner`'s part current for its `generation`, dropping older
    /// entries; other partners' parts are untouched.
    pub(crate) fn sync(&self, owner: &str, generation: i64) {
        if let Ok(mut c) = self.0.write() {
            if let Some(part) = c.get_mut(owner) {
                if part.generation != generation {
                    part.entries.clear();
                    part.generation = generation;
                }
            } else {
                c.insert(
                    owner.to_owned(),
                    CachePart {
                        generation,
                        entries: HashMap::new(),
                    },
                );
            }
        }
    }

    pub(crate) fn get(&self, owner: &str, k: &[u8; HASH_LEN]) -> Option<Option<String>> {
        self.0.read().ok()?.get(owner)?.entries.get(k).cloned()
    }

    pub(crate) fn insert(
        &self,
        generation: i64,
        owner: &str,
        k: [u8; HASH_LEN],
        v: Option<String>,
    ) {
        if let Ok(mut c) = self.0.write() {
            // A part is made by `sync`; an answer read under an older
            // generation (an import raced the lookup) is not kept.
            let Some(part) = c.get_mut(owner) else {
                return;
            };
            if part.generation != generation {
                return;
            }
            if part.entries.len() >= CACHE_LIMIT_PER_PARTNER {
                part.entries.clear();
            }
            part.entries.insert(k, v);
        }
    }
}

/// Requests in flight per partner, at most (admission control).
pub(crate) const MAX_IN_FLIGHT_PER_PARTNER: usize = 64;

/// Calls one identity may have open at the edge, from their headers to
/// the end of their answer: room for [`MAX_IN_FLIGHT_PER_PARTNER`] requests
/// and every long-lived stream a partner may hold. The edge sees a call
/// before its request message is read, so this bounds what one identity
/// can make the vault buffer (calls times the message size cap, about
/// 128 MiB at the default 1 MiB) however many connections and streams it
/// opens; the in-flight limit above is only reached once a message was
/// read whole.
pub const MAX_EDGE_CALLS_PER_IDENTITY: usize = 128;

/// Distinct identities whose coalesced refusals are counted per interval;
/// the rest share one counter.
const MAX_REFUSAL_KEYS: usize = 1024;

/// Admission control: a limit of requests in flight per partner, so one
/// partner cannot occupy the writer queue, and coalesced counts of the
/// refusals that must not each write a leaf (unregistered identities,
/// overload, calls whose deadline passed in the queue), so a flood cannot
/// flood the log either.
#[derive(Debug)]
pub(crate) struct Admission {
    per_partner: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Each partner's share of the store's connections
    /// (`Store::connections_per_partner`).
    connections: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Calls open at the edge per registered SPIFFE id
    /// ([`MAX_EDGE_CALLS_PER_IDENTITY`]).
    edge: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// The same, shared by every identity the registry does not know
    /// (they are refused once their message is read; until then they must
    /// not hold more than one partner's share).
    edge_unregistered: Arc<tokio::sync::Semaphore>,
    refusals: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Admission {
    /// Admission for `registry`'s partners, each allowed
    /// `connections_per_partner` store connections at once.
    pub(crate) fn new(registry: &PartnerRegistry, connections_per_partner: usize) -> Self {
        let each = |n: usize| {
            registry
                .partners()
                .iter()
                .map(|p| (p.name.clone(), Arc::new(tokio::sync::Semaphore::new(n))))
                .collect()
        };
        Self {
            per_partner: each(MAX_IN_FLIGHT_PER_PARTNER),
            connections: each(connections_per_partner),
            edge: registry
                .partners()
                .iter()
                .map(|p| {
                    let s = tokio::sync::Semaphore::new(MAX_EDGE_CALLS_PER_IDENTITY);
                    (p.spiffe_id.clone(), Arc::new(s))
                })
                .collect(),
            edge_unregistered: Arc::new(tokio::sync::Semaphore::new(MAX_EDGE_CALLS_PER_IDENTITY)),
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one call of `spiffe_id` at the edge (`None`: a caller
    /// without an identity, or one of an unknown identity, shares the
    /// unregistered places), or `None` when it already has
    /// [`MAX_EDGE_CALLS_PER_IDENTITY`] calls open.
    pub(crate) fn enter_edge(
        &self,
        spiffe_id: Option<&str>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let places = spiffe_id
            .and_then(|id| self.edge.get(id))
            .unwrap_or(&self.edge_unregistered);
        Arc::clone(places).try_acquire_owned().ok()
    }

    /// `partner`'s share of the store's connections.
    pub(crate) fn connections(&self, partner: &str) -> Option<Arc<tokio::sync::Semaphore>> {
        self.connections.get(partner).cloned()
    }

    /// A slot for one request of `partner`, or `None` when it already has
    /// [`MAX_IN_FLIGHT_PER_PARTNER`] in flight.
    pub(crate) fn enter(&self, partner: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let s = self.per_partner.get(partner)?;
        Arc::clone(s).try_acquire_owned().ok()
    }

    /// Counts one coalesced refusal of `who` for `why`.
    pub(crate) fn count_refusal(&self, who: &str, why: &'static str) {
        self.count_refusals(who, why, 1);
    }

    /// Counts `n` coalesced refusals of `who` for `why` (also: counts
    /// taken for a record that could not be written, put back).
    pub(crate) fn count_refusals(&self, who: &str, why: &'static str, n: u64) {
        let mut m = match self.refusals.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let key = if m.len() < MAX_REFUSAL_KEYS || m.contains_key(&(who.to_owned(), why)) {
            (who.to_owned(), why)
        } else {
            ("(other identities)".to_owned(), why)
        };
        let c = m.entry(key).or_default();
        *c = c.saturating_add(n);
    }

    /// Takes the counts gathered since the last call.
    pub(crate) fn take_refusals(&self) -> Vec<((String, &'static str), u64)> {
        let mut m = match self.refusals.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut v: Vec<_> = m.drain().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_counts_put_back_add_up_and_stay_bounded() {
        let a = Admission {
            per_partner: HashMap::new(),
            connections: HashMap::new(),
            edge: HashMap::new(),
            edge_unregistered: Arc::new(tokio::sync::Semaphore::new(1)),
            refusals: Mutex::new(HashMap::new()),
        };
        a.count_refusal("x", "overloaded");
        let taken = a.take_refusals();
        assert_eq!(taken, vec![(("x".to_owned(), "overloaded"), 1)]);
        assert!(a.take_refusals().is_empty());
        // A record that could not be written: its count comes back and
        // adds to the ones counted meanwhile.
        a.count_refusal("x", "overloaded");
        a.count_refusals("x", "overloaded", 1);
        assert_eq!(a.take_refusals(), vec![(("x".to_owned(), "overloaded"), 2)]);
        for i in 0..MAX_REFUSAL_KEYS + 10 {
            a.count_refusals(&format!("id-{i}"), "unregistered", 3);
        }
        let taken = a.take_refusals();
        assert_eq!(taken.len(), MAX_REFUSAL_KEYS + 1);
        assert_eq!(
            taken.iter().map(|(_, n)| n).sum::<u64>(),
            3 * (MAX_REFUSAL_KEYS as u64 + 10)
        );
    }

    #[test]
    fn one_partners_lookups_never_evict_anothers() {
        let c = XrefCache::default();
        c.sync("a", 1);
        c.sync("b", 1);
        c.insert(1, "a", [1; HASH_LEN], Some("et_a".into()));
        for i in 0..=CACHE_LIMIT_PER_PARTNER as u32 {
            let mut k = [0u8; HASH_LEN];
            k[..4].copy_from_slice(&i.to_be_bytes());
            c.insert(1, "b", k, None);
        }
        assert_eq!(c.get("a", &[1; HASH_LEN]), Some(Some("et_a".into())));
        // Namespaces do not see each other's entries.
        assert_eq!(c.get("b", &[1; HASH_LEN]), None);
        // Another partner's new generation (its import) leaves this
        // partner's entries alone.
        c.sync("b", 2);
        c.clear_owner("b");
        assert_eq!(c.get("a", &[1; HASH_LEN]), Some(Some("et_a".into())));
        // Its own new generation empties its part; a stale insert is
        // dropped.
        c.sync("a", 2);
        assert_eq!(c.get("a", &[1; HASH_LEN]), None);
        c.insert(1, "a", [1; HASH_LEN], Some("et_a".into()));
        assert_eq!(c.get("a", &[1; HASH_LEN]), None);
        // A part never synced takes no entries.
        c.insert(0, "c", [1; HASH_LEN], None);
        assert_eq!(c.get("c", &[1; HASH_LEN]), None);
    }
}
