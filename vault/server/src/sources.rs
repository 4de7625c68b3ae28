//! Limits counted per source address, for identities that many end users
//! share.
//!
//! A partner's certificate belongs to one institution, so its allowances
//! (connections, calls open at the edge, requests in flight) are counted
//! per identity. A wallet app's certificate (role `devices.wallet`) is in
//! every copy of the app: every phone speaks through that one identity,
//! and anyone who extracts it from an app can too. Counted per identity,
//! one such holder could take every place and have every phone refused.
//! So the identities many end users share draw on one pool of places per
//! allowance, counted per source: a *host* (an IPv4 address, an IPv6 /64:
//! what one phone or one home network gets) holds at most a share, and a
//! *network* (an IPv4 /24, an IPv6 /48: what one customer of an ISP or
//! one cloud tenant gets easily) two host shares, a quarter of the pool.
//! Taking every place then needs addresses in four networks; one host, or
//! one network however many /64s it holds, takes only its own share. The
//! host shares are generous (a partner's connections, half its calls and
//! requests) so that many phones behind one address, or a test driving
//! many phones from one machine, are not refused in ordinary use.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Connections the shared identities may hold open from one host, by
/// default (`[server] shared_connections_per_source`). As many as a
/// partner's identity, because many phones can share one public IPv4
/// address (carrier-grade NAT), each with a connection of its own.
pub const SHARED_CONNECTIONS_PER_SOURCE: usize = 256;

/// Connections the shared identities may hold open in all, together (half
/// of [`crate::crl::MAX_CONNECTIONS`]: partners keep the other half).
pub const SHARED_CONNECTIONS: usize = 2048;

/// Calls the shared identities may have open at the edge from one host,
/// by default (`[server] shared_calls_per_source`; a partner's own
/// allowance is [`crate::service::MAX_EDGE_CALLS_PER_IDENTITY`]).
pub const SHARED_CALLS_PER_SOURCE: usize = 64;

/// Calls the shared identities may have open at the edge in all,
/// together. What they can make the vault buffer is this many messages,
/// each within the cap of the service called: 64 KiB for the services a
/// wallet uses, the server's `max_message_bytes` for the bulk ones (its
/// role is refused there, but only once the message was read): 512 MiB at
/// the default 1 MiB, four partners' worth.
pub const SHARED_CALLS: usize = 512;

/// Requests of the shared identities in flight from one host, by default
/// (`[server] shared_requests_per_source`; a partner has 64 in all). A
/// request in flight on PostgreSQL may hold one of its identity's share of
/// the pool's connections (8): one host can hold all of it, and the other
/// phones' requests then wait for a connection (SECURITY.md, "Known
/// limits").
pub const SHARED_IN_FLIGHT_PER_SOURCE: usize = 32;

/// Requests of the shared identities in flight in all, together: a
/// quarter of the writer queue ([`crate::store::WRITE_QUEUE`]).
pub const SHARED_IN_FLIGHT: usize = 256;

/// A network's share: this many host shares.
const HOSTS_PER_NETWORK: usize = 2;

/// The host a connection from `ip` is counted under: an IPv4 address
/// (also when it comes as an IPv4-mapped IPv6 address), or an IPv6
/// address's /64 (one host can use every address of its /64, and a phone
/// or a home network gets one /64).
pub fn host_of(ip: IpAddr) -> IpAddr {
    prefix(ip, 32, 64)
}

/// The network a connection from `ip` is counted under: an IPv4 /24, or
/// an IPv6 /48 (ISPs delegate a /56 or a /48 to one customer, and tunnel
/// brokers a /48 for free).
pub fn network_of(ip: IpAddr) -> IpAddr {
    prefix(ip, 24, 48)
}

/// `ip`'s first `v4_bits` (of an IPv4 address, also mapped or 6to4) or
/// `v6_bits` (of any other IPv6 address).
fn prefix(ip: IpAddr, v4_bits: u32, v6_bits: u32) -> IpAddr {
    debug_assert!(v4_bits <= 32 && v6_bits <= 128, "prefix lengths");
    let v4 = |a: Ipv4Addr| {
        let mask = u32::MAX.checked_shl(32 - v4_bits).unwrap_or(0);
        IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
    };
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped().or_else(|| embedded_v4(a)) {
            Some(m) => v4(m),
            None => {
                let mask = u128::MAX.checked_shl(128 - v6_bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        },
    }
}

/// The IPv4 address an IPv6 address stands for, where it embeds one:
/// - 6to4 (`2002:V4ADDR::/48`, RFC 3056): each IPv4 address has a /48 of
///   its own there, so counting it as IPv6 would give one IPv4 /24 256
///   networks;
/// - NAT64's well-known prefix (`64:ff9b::/96`, RFC 6052): behind a
///   translator every IPv4 client arrives there, and counted as IPv6 all
///   of them would share one host's places;
/// - Teredo (`2001:0::/32`, RFC 4380): the client's public IPv4 address,
///   inverted, in the last 32 bits; the server field before it is the
///   client's to choose, so counted as IPv6 one IPv4 host could appear as
///   any number of networks.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2001, 0, _, _, _, _, hi, lo] => Some(v4(!hi, !lo)),
        _ => None,
    }
}

/// Which share was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The host's or its network's share.
    Source,
    /// The whole pool.
    Pool,
}

/// One pool of places of the shared identities, counted per host, per
/// network and in all.
#[derive(Debug)]
pub struct SourcePlaces {
    per_host: usize,
    per_network: usize,
    total: usize,
    /// Places taken, per host, per network and in all. A host or network
    /// is present only while it holds a place, so each map holds at most
    /// `total` entries.
    taken: Arc<Mutex<Taken>>,
}

#[derive(Debug, Default)]
struct Taken {
    hosts: HashMap<IpAddr, usize>,
    networks: HashMap<IpAddr, usize>,
    all: usize,
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct SourcePlace {
    host: IpAddr,
    network: IpAddr,
    taken: Arc<Mutex<Taken>>,
}

impl SourcePlaces {
    /// `total` places, at most `per_host` of them from one host and twice
    /// that (at most `total`) from one network.
    pub fn new(per_host: usize, total: usize) -> Self {
        Self {
            per_host,
            per_network: per_host.saturating_mul(HOSTS_PER_NETWORK).min(total),
            total,
            taken: Arc::default(),
        }
    }

    /// A host's share.
    pub fn per_host(&self) -> usize {
        self.per_host
    }

    /// The whole pool.
    pub fn total(&self) -> usize {
        self.total
    }

    /// A place for a connection or call from `remote`, unless its host's
    /// or its network's share or the whole pool is taken.
    pub fn try_take(&self, remote: IpAddr) -> Result<SourcePlace, Full> {
        let (host, network) = (host_of(remote), network_of(remote));
        let mut t = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        if t.all >= self.total {
            return Err(Full::Pool);
        }
        let of_host = t.hosts.get(&host).copied().unwrap_or(0);
        let of_network = t.networks.get(&network).copied().unwrap_or(0);
        if of_host >= self.per_host || of_network >= self.per_network {
            return Err(Full::Source);
        }
        t.hosts.insert(host, of_host + 1);
        t.networks.insert(network, of_network + 1);
        t.all += 1;
        Ok(SourcePlace {
            host,
            network,
            taken: Arc::clone(&self.taken),
        })
    }

    /// Places taken now: from `remote`'s host, from its network, in all.
    pub fn taken(&self, remote: IpAddr) -> (usize, usize, usize) {
        let t = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        (
            t.hosts.get(&host_of(remote)).copied().unwrap_or(0),
            t.networks.get(&network_of(remote)).copied().unwrap_or(0),
            t.all,
        )
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut guard = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let Taken {
            hosts,
            networks,
            all,
        } = &mut *guard;
        *all = all.saturating_sub(1);
        for (map, key) in [(hosts, self.host), (networks, self.network)] {
            if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_and_networks_of_both_families() {
        assert_eq!(host_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.0"));
        assert_eq!(host_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("::ffff:192.0.2.7")), ip("192.0.2.0"));
        assert_eq!(
            host_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            network_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1::")
        );
        assert_eq!(
            host_of(ip("2001:db8:1:2::1")),
            host_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            host_of(ip("2001:db8:1:2::1")),
            host_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            network_of(ip("2001:db8:1:2::1")),
            network_of(ip("2001:db8:1:ff00::1"))
        );
        // 6to4 counts as the IPv4 address it is made from.
        assert_eq!(host_of(ip("2002:c000:0207:1::5")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("2002:c000:0208:9::")), ip("192.0.2.0"));
        // So do NAT64's well-known prefix and Teredo (whatever server
        // field the client put in; RFC 4380's example client 192.0.2.45).
        assert_eq!(host_of(ip("64:ff9b::192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network_of(ip("64:ff9b::198.51.100.9")), ip("198.51.100.0"));
        assert_eq!(
            host_of(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2")),
            ip("192.0.2.45")
        );
        assert_eq!(
            host_of(ip("2001:0:ffff:1:8000:63bf:3fff:fdd2")),
            ip("192.0.2.45")
        );
    }

    #[test]
    fn one_host_takes_only_its_share_and_places_come_back() {
        let p = SourcePlaces::new(2, 3);
        let a1 = p.try_take(ip("192.0.2.1")).unwrap();
        let a2 = p.try_take(ip("192.0.2.1")).unwrap();
        assert_eq!(p.try_take(ip("192.0.2.1")).unwrap_err(), Full::Source);
        // Another address of the same /64 is the same host.
        let v6 = p.try_take(ip("2001:db8::1")).unwrap();
        assert_eq!(p.taken(ip("2001:db8::2")), (1, 1, 3));
        assert_eq!(p.try_take(ip("2001:db8::2")).unwrap_err(), Full::Pool);
        assert_eq!(p.taken(ip("192.0.2.1")), (2, 2, 3));
        drop(a1);
        assert_eq!(p.taken(ip("192.0.2.1")), (1, 1, 2));
        let b = p.try_take(ip("198.51.100.9")).unwrap();
        assert_eq!(p.try_take(ip("203.0.113.1")).unwrap_err(), Full::Pool);
        drop((a2, v6, b));
        assert_eq!(p.taken(ip("192.0.2.1")), (0, 0, 0));
        // A host or network that holds nothing is not kept.
        let t = p.taken.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(t.hosts.is_empty() && t.networks.is_empty());
    }

    #[test]
    fn many_hosts_of_one_network_take_its_share_only() {
        let p = SourcePlaces::new(2, 100);
        let mut held = Vec::new();
        // Eight /64s of one /48: two host shares of 2, then refused.
        for i in 0..8u16 {
            match p.try_take(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, i, 0, 0, 0, 1))) {
                Ok(place) => held.push(place),
                Err(e) => assert_eq!(e, Full::Source),
            }
            let _ = p
                .try_take(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, i, 0, 0, 0, 2)))
                .map(|place| held.push(place));
        }
        assert_eq!(held.len(), 4);
        // Another /48, and an IPv4 /24, still get theirs.
        assert!(p.try_take(ip("2001:db8:8::1")).is_ok());
        let mut v4 = Vec::new();
        for i in 1..=20u8 {
            if let Ok(place) = p.try_take(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))) {
                v4.push(place);
            }
        }
        assert_eq!(v4.len(), 4, "one /24's share");
    }
}
