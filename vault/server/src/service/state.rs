//! State the use cases share inside one process, built at start: the
//! blind-matching keyrings and rate limiters, and the cross-reference
//! lookup cache. It holds values only; it never calls a use case (the
//! `Vault` owns it, the use cases read it).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use idvault_core::crypto::HASH_LEN;
use idvault_core::matching::{MatchKeyring, MatchModel};
use idvault_tokenizer::NormalizeOptions;

use crate::config::{Partner, PartnerRegistry};
use crate::sources::{
    Full, SHARED_CALLS, SHARED_CALLS_PER_SOURCE, SHARED_IN_FLIGHT, SHARED_IN_FLIGHT_PER_SOURCE,
    SourcePlace, SourcePlaces,
};

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
/// read whole. The identities many end users share (wallet apps') are
/// counted per source address instead, from one pool
/// ([`crate::sources::SHARED_CALLS`]).
pub const MAX_EDGE_CALLS_PER_IDENTITY: usize = 128;

/// A call's place at the edge or a request's slot among those in flight,
/// given back when dropped.
#[derive(Debug)]
pub(crate) enum Place {
    /// One of its identity's (or of the unregistered ones, at the edge).
    Identity(#[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit),
    /// One of its source's, for an identity many end users share.
    Source(#[allow(dead_code, reason = "held for its drop")] SourcePlace),
}

/// A place from one of the shared identities' pools, or which share
/// refused it: the host's share, or the whole pool.
fn take_shared(places: &SourcePlaces, remote: std::net::IpAddr) -> Result<Place, SharedFull> {
    places
        .try_take(remote)
        .map(Place::Source)
        .map_err(|f| match f {
            Full::Source => SharedFull::Source(places.per_host()),
            Full::Pool => SharedFull::Pool(places.total()),
        })
}

/// Which share of a shared identities' pool refused a place, with its
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedFull {
    /// Its host's (or its network's) share: the host's share.
    Source(usize),
    /// The whole pool: its size.
    Pool(usize),
}

/// Which allowance refused a request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InFlightFull {
    /// Its partner's [`MAX_IN_FLIGHT_PER_PARTNER`].
    Partner,
    /// A share of the shared identities' pool.
    Shared(SharedFull),
}

impl InFlightFull {
    /// The number of requests in flight that refused it.
    pub(crate) fn limit(self) -> usize {
        match self {
            Self::Partner => MAX_IN_FLIGHT_PER_PARTNER,
            Self::Shared(SharedFull::Source(n) | SharedFull::Pool(n)) => n,
        }
    }

    /// The coalesced refusal's reason: the whole pool full (every phone
    /// refused) has one of its own.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Partner | Self::Shared(SharedFull::Source(_)) => "overloaded",
            Self::Shared(SharedFull::Pool(_)) => "overloaded (all sources)",
        }
    }
}

/// Which allowance refused a call at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeFull {
    /// Its identity's [`MAX_EDGE_CALLS_PER_IDENTITY`].
    Identity,
    /// A share of the shared identities' pool.
    Shared(SharedFull),
}

impl EdgeFull {
    /// The refusal's message.
    pub(crate) fn message(self) -> String {
        match self {
            Self::Identity => format!(
                "this identity has {MAX_EDGE_CALLS_PER_IDENTITY} calls open; wait for some to end"
            ),
            Self::Shared(SharedFull::Source(n)) => format!(
                "this address (or its network) has {n} or more calls open; wait for some to end"
            ),
            Self::Shared(SharedFull::Pool(n)) => {
                format!("the wallet app identities have {n} calls open; wait for some to end")
            }
        }
    }

    /// The coalesced refusal's reason: a host's share full is an abuser
    /// contained, the whole pool full is every phone refused.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Identity | Self::Shared(SharedFull::Source(_)) => "too many calls open",
            Self::Shared(SharedFull::Pool(_)) => "too many calls open (all sources)",
        }
    }
}

/// Distinct identities whose coalesced refusals are counted per interval;
/// the rest share one counter.
const MAX_REFUSAL_KEYS: usize = 1024;

/// Admission control: a limit of requests in flight per partner (per
/// source address for the identities many end users share), so one
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
    /// Calls open at the edge per registered SPIFFE id, but for the
    /// shared identities ([`MAX_EDGE_CALLS_PER_IDENTITY`]).
    edge: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// The same, shared by every identity the registry does not know
    /// (they are refused once their message is read; until then they must
    /// not hold more than one partner's share).
    edge_unregistered: Arc<tokio::sync::Semaphore>,
    /// Identities many end users share (a wallet app's,
    /// [`PartnerRegistry::shared_identities`]): their calls at the edge
    /// and their requests in flight are counted per source address, in
    /// one pool each for all of them ([`crate::sources`]).
    shared: HashSet<String>,
    edge_shared: SourcePlaces,
    in_flight_shared: SourcePlaces,
    refusals: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Admission {
    /// Admission for `registry`'s partners, each allowed
    /// `connections_per_partner` store connections at once.
    pub(crate) fn new(registry: &PartnerRegistry, connections_per_partner: usize) -> Self {
        let shared: HashSet<String> = registry.shared_identities().into_iter().collect();
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
                .filter(|p| !shared.contains(&p.spiffe_id))
                .map(|p| {
                    let s = tokio::sync::Semaphore::new(MAX_EDGE_CALLS_PER_IDENTITY);
                    (p.spiffe_id.clone(), Arc::new(s))
                })
                .collect(),
            shared,
            edge_shared: SourcePlaces::new(SHARED_CALLS_PER_SOURCE, SHARED_CALLS),
            in_flight_shared: SourcePlaces::new(SHARED_IN_FLIGHT_PER_SOURCE, SHARED_IN_FLIGHT),
            edge_unregistered: Arc::new(tokio::sync::Semaphore::new(MAX_EDGE_CALLS_PER_IDENTITY)),
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// Gives each host `calls` of the shared identities' [`SHARED_CALLS`]
    /// and `requests` of their [`SHARED_IN_FLIGHT`] (each at least 1); set
    /// at start, before any call.
    pub(crate) fn set_shared_shares(&mut self, calls: usize, requests: usize) {
        self.edge_shared = SourcePlaces::new(calls.max(1), SHARED_CALLS);
        self.in_flight_shared = SourcePlaces::new(requests.max(1), SHARED_IN_FLIGHT);
    }

    /// Requests of the shared identities in flight from `remote`'s host.
    pub(crate) fn shared_in_flight_from(&self, remote: std::net::IpAddr) -> usize {
        self.in_flight_shared.taken(remote).0
    }

    /// A place for one call of `spiffe_id` from `remote` at the edge
    /// (`None`: a caller without an identity, or one of an unknown
    /// identity, shares the unregistered places), unless its allowance is
    /// taken: [`MAX_EDGE_CALLS_PER_IDENTITY`] calls open, or for an
    /// identity many end users share its host's share (`[server]
    /// shared_calls_per_source`, twice that per network) of the
    /// [`SHARED_CALLS`] they all share.
    pub(crate) fn enter_edge(
        &self,
        spiffe_id: Option<&str>,
        remote: Option<std::net::IpAddr>,
    ) -> Result<Place, EdgeFull> {
        // The identity and the address both come from the connection
        // (`PeerInfo`): a shared identity always has an address here.
        if let (Some(id), Some(remote)) = (spiffe_id, remote)
            && self.shared.contains(id)
        {
            return take_shared(&self.edge_shared, remote).map_err(EdgeFull::Shared);
        }
        let places = spiffe_id
            .and_then(|id| self.edge.get(id))
            .unwrap_or(&self.edge_unregistered);
        Arc::clone(places)
            .try_acquire_owned()
            .map(Place::Identity)
            .map_err(|_| EdgeFull::Identity)
    }

    /// `partner`'s share of the store's connections.
    pub(crate) fn connections(&self, partner: &str) -> Option<Arc<tokio::sync::Semaphore>> {
        self.connections.get(partner).cloned()
    }

    /// A slot for one request of `partner` from `remote`, unless its
    /// allowance is taken: [`MAX_IN_FLIGHT_PER_PARTNER`] of its own, or
    /// for an identity many end users share its host's share (`[server]
    /// shared_requests_per_source`, twice that per network) of the
    /// [`SHARED_IN_FLIGHT`] they all share. A caller without an address
    /// (in process) counts as its partner.
    pub(crate) fn enter(
        &self,
        partner: &Partner,
        remote: Option<std::net::IpAddr>,
    ) -> Result<Place, InFlightFull> {
        if let Some(remote) = remote
            && self.shared.contains(&partner.spiffe_id)
        {
            return take_shared(&self.in_flight_shared, remote).map_err(InFlightFull::Shared);
        }
        let s = self
            .per_partner
            .get(&partner.name)
            .ok_or(InFlightFull::Partner)?;
        Arc::clone(s)
            .try_acquire_owned()
            .map(Place::Identity)
            .map_err(|_| InFlightFull::Partner)
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

    fn partner(name: &str, roles: Vec<idvault_policies::Role>) -> Partner {
        Partner {
            name: name.into(),
            spiffe_id: format!("spiffe://t/partner/{name}"),
            roles,
            token_domains: Vec::new(),
            match_domain: name.into(),
            match_rate: idvault_core::partner::MatchRate {
                per_second: 1,
                burst: 1,
            },
            release_key: None,
            release_purposes: Vec::new(),
            release_fields: Vec::new(),
            presentation_audiences: Vec::new(),
            outbox_per_source: 1,
        }
    }

    /// Two wallet identities draw on one pool per allowance, counted per
    /// source; a partner keeps its own allowances whatever its address.
    #[test]
    fn shared_identities_are_admitted_per_source_from_one_pool() {
        use idvault_policies::Role;
        use std::net::{IpAddr, Ipv4Addr};
        let wallets = [
            partner("ios", vec![Role::DevicesWallet]),
            partner("android", vec![Role::DevicesWallet]),
        ];
        let bank = partner("bank", vec![Role::SubjectsWrite]);
        let registry =
            PartnerRegistry::new(wallets.iter().cloned().chain([bank.clone()]).collect());
        let a = Admission::new(&registry, 4);
        let host = |d: u8, h: u8| Some(IpAddr::V4(Ipv4Addr::new(192, 0, d, h)));
        // Requests in flight: a host's share, across both wallet identities.
        let mut held = Vec::new();
        for i in 0..SHARED_IN_FLIGHT_PER_SOURCE {
            held.push(a.enter(&wallets[i % 2], host(2, 1)).unwrap());
        }
        for w in &wallets {
            assert_eq!(
                a.enter(w, host(2, 1)).unwrap_err(),
                InFlightFull::Shared(SharedFull::Source(SHARED_IN_FLIGHT_PER_SOURCE))
            );
        }
        // Another host is admitted; the partner from the same address too.
        held.push(a.enter(&wallets[0], host(2, 2)).unwrap());
        for _ in 0..MAX_IN_FLIGHT_PER_PARTNER {
            held.push(a.enter(&bank, host(2, 1)).unwrap());
        }
        assert_eq!(
            a.enter(&bank, host(9, 9)).unwrap_err(),
            InFlightFull::Partner
        );
        // Calls at the edge: the same, with the host's share in the refusal.
        let mut calls = Vec::new();
        for _ in 0..SHARED_CALLS_PER_SOURCE {
            calls.push(
                a.enter_edge(Some(&wallets[1].spiffe_id), host(3, 1))
                    .unwrap(),
            );
        }
        let full = a
            .enter_edge(Some(&wallets[0].spiffe_id), host(3, 1))
            .unwrap_err();
        assert_eq!(
            full,
            EdgeFull::Shared(SharedFull::Source(SHARED_CALLS_PER_SOURCE))
        );
        assert!(
            full.message().contains("this address"),
            "{}",
            full.message()
        );
        assert!(
            a.enter_edge(Some(&wallets[0].spiffe_id), host(3, 2))
                .is_ok()
        );
        // Places come back when dropped.
        held.clear();
        calls.clear();
        assert!(a.enter(&wallets[0], host(2, 1)).is_ok());
        assert!(
            a.enter_edge(Some(&wallets[0].spiffe_id), host(3, 1))
                .is_ok()
        );
    }

    /// With the default shares, hosts of four networks fill a pool (each
    /// network two host shares, a quarter of it): the last host of the
    /// fourth is refused for the pool, with its own message and reason.
    #[test]
    fn four_networks_fill_a_shared_pool() {
        use idvault_policies::Role;
        use std::net::{IpAddr, Ipv4Addr};
        let wallet = partner("ios", vec![Role::DevicesWallet]);
        let a = Admission::new(&PartnerRegistry::new(vec![wallet.clone()]), 4);
        let ip = |net: u8, h: u8| Some(IpAddr::V4(Ipv4Addr::new(10, net, 0, h)));
        let id = Some(wallet.spiffe_id.as_str());
        let mut calls = Vec::new();
        for net in 0..4 {
            // A third host of a network is refused for its network's share.
            for h in 0..2 {
                for _ in 0..SHARED_CALLS_PER_SOURCE {
                    calls.push(a.enter_edge(id, ip(net, h)).unwrap());
                }
            }
            let third = a.enter_edge(id, ip(net, 2));
            if net < 3 {
                assert_eq!(
                    third.unwrap_err(),
                    EdgeFull::Shared(SharedFull::Source(SHARED_CALLS_PER_SOURCE))
                );
            } else {
                let full = third.unwrap_err();
                assert_eq!(full, EdgeFull::Shared(SharedFull::Pool(SHARED_CALLS)));
                assert!(
                    full.message().contains("wallet app identities"),
                    "{}",
                    full.message()
                );
                assert_ne!(full.reason(), EdgeFull::Identity.reason());
            }
        }
        assert_eq!(calls.len(), SHARED_CALLS);
        // Requests in flight: the same shape, with the pool's own reason.
        let mut held = Vec::new();
        for net in 0..4 {
            for h in 0..2 {
                for _ in 0..SHARED_IN_FLIGHT_PER_SOURCE {
                    held.push(a.enter(&wallet, ip(net, h)).unwrap());
                }
            }
        }
        let full = a.enter(&wallet, ip(9, 9)).unwrap_err();
        assert_eq!(
            full,
            InFlightFull::Shared(SharedFull::Pool(SHARED_IN_FLIGHT))
        );
        assert_eq!(full.limit(), SHARED_IN_FLIGHT);
        assert_ne!(full.reason(), InFlightFull::Partner.reason());
    }

    /// The configured host shares apply.
    #[test]
    fn configured_shares_apply() {
        use idvault_policies::Role;
        use std::net::{IpAddr, Ipv4Addr};
        let wallet = partner("ios", vec![Role::DevicesWallet]);
        let mut a = Admission::new(&PartnerRegistry::new(vec![wallet.clone()]), 4);
        a.set_shared_shares(3, 1);
        let ip = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let id = Some(wallet.spiffe_id.as_str());
        let _calls: Vec<_> = (0..3).map(|_| a.enter_edge(id, ip).unwrap()).collect();
        let full = a.enter_edge(id, ip).unwrap_err();
        assert_eq!(full, EdgeFull::Shared(SharedFull::Source(3)));
        assert!(full.message().contains(" 3 "), "{}", full.message());
        let _one = a.enter(&wallet, ip).unwrap();
        assert_eq!(a.enter(&wallet, ip).unwrap_err().limit(), 1);
    }

    #[test]
    fn refusal_counts_put_back_add_up_and_stay_bounded() {
        let a = Admission {
            per_partner: HashMap::new(),
            connections: HashMap::new(),
            edge: HashMap::new(),
            shared: HashSet::new(),
            edge_shared: SourcePlaces::new(1, 1),
            in_flight_shared: SourcePlaces::new(1, 1),
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
