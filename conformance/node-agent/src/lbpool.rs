//! The LoadBalancer address pool: which Service holds which address.
//!
//! Pure bookkeeping; `services.rs` feeds it the Services and writes the
//! result to their status. Addresses from `reserved_from` up are handed out
//! only to Services that ask for them (`spec.loadBalancerIP`), so a test can
//! be given an address that nothing else took.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::ipam::Cidr;

/// Why a Service got no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// The requested address is not a usable address of the pool.
    OutsidePool(Ipv4Addr, Cidr),
    /// The requested address belongs to another Service.
    Taken(Ipv4Addr, String),
    /// No free address left for automatic allocation.
    Exhausted(Cidr),
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::OutsidePool(ip, pool) => {
                write!(f, "requested address {ip} is not in the pool {pool}")
            }
            AllocError::Taken(ip, owner) => {
                write!(f, "requested address {ip} is already assigned to {owner}")
            }
            AllocError::Exhausted(pool) => write!(f, "no free address left in the pool {pool}"),
        }
    }
}

/// Allocations of one pool, keyed by `namespace/name`.
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: Cidr,
    /// Host offsets from here on are never allocated automatically.
    reserved_from: u32,
    owners: BTreeMap<Ipv4Addr, String>,
}

impl Pool {
    /// An empty pool; host offsets `reserved_from..` are for explicit requests.
    pub fn new(cidr: Cidr, reserved_from: u32) -> Self {
        Self {
            cidr,
            reserved_from,
            owners: BTreeMap::new(),
        }
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.cidr.prefix)
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let off = u32::from(ip).wrapping_sub(u32::from(self.cidr.base));
        (off < self.size()).then_some(off)
    }

    /// A usable address of the pool: inside it, neither network nor broadcast.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        matches!(self.offset(ip), Some(off) if off != 0 && off != self.size() - 1)
    }

    /// The address `key` holds.
    pub fn address_of(&self, key: &str) -> Option<Ipv4Addr> {
        self.owners
            .iter()
            .find(|(_, k)| k.as_str() == key)
            .map(|(ip, _)| *ip)
    }

    /// Every allocation, address → `namespace/name`.
    pub fn allocations(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.owners
    }

    /// Takes over an address a Service already shows in its status (agent
    /// restart). False when it is not in the pool or someone else holds it.
    pub fn adopt(&mut self, key: &str, ip: Ipv4Addr) -> bool {
        if !self.contains(ip) || self.address_of(key).is_some() {
            return false;
        }
        match self.owners.get(&ip) {
            Some(owner) => owner == key,
            None => {
                self.owners.insert(ip, key.to_string());
                true
            }
        }
    }

    /// Gives `key` an address: `requested` if it is in the pool and free,
    /// else (without a request) the lowest free one below the reserved range.
    /// A key that already holds a matching address keeps it.
    pub fn allocate(
        &mut self,
        key: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(held) = self.address_of(key) {
            if requested.is_none_or(|r| r == held) {
                return Ok(held);
            }
            self.release(key);
        }
        if let Some(ip) = requested {
            if !self.contains(ip) {
                return Err(AllocError::OutsidePool(ip, self.cidr));
            }
            if let Some(owner) = self.owners.get(&ip) {
                return Err(AllocError::Taken(ip, owner.clone()));
            }
            self.owners.insert(ip, key.to_string());
            return Ok(ip);
        }
        let end = self.reserved_from.min(self.size() - 1);
        for off in 1..end {
            let ip = Ipv4Addr::from(u32::from(self.cidr.base) + off);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.owners.entry(ip) {
                slot.insert(key.to_string());
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted(self.cidr))
    }

    /// Frees whatever `key` holds.
    pub fn release(&mut self, key: &str) {
        self.owners.retain(|_, k| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new("10.245.0.0/24".parse().expect("cidr"), 200)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn automatic_allocation_skips_network_and_reserved() {
        let mut p = pool();
        assert_eq!(p.allocate("a/x", None), Ok(ip("10.245.0.1")));
        assert_eq!(p.allocate("a/y", None), Ok(ip("10.245.0.2")));
        // Idempotent.
        assert_eq!(p.allocate("a/x", None), Ok(ip("10.245.0.1")));
        p.release("a/x");
        assert_eq!(p.allocate("a/z", None), Ok(ip("10.245.0.1")));
        let mut small = Pool::new("10.245.0.0/24".parse().expect("cidr"), 3);
        assert!(small.allocate("1", None).is_ok());
        assert!(small.allocate("2", None).is_ok());
        assert_eq!(
            small.allocate("3", None),
            Err(AllocError::Exhausted(
                "10.245.0.0/24".parse().expect("cidr")
            ))
        );
        // The reserved range is still there for explicit requests.
        assert_eq!(
            small.allocate("3", Some(ip("10.245.0.200"))),
            Ok(ip("10.245.0.200"))
        );
    }

    #[test]
    fn explicit_requests() {
        let mut p = pool();
        assert_eq!(
            p.allocate("a/x", Some(ip("10.245.0.200"))),
            Ok(ip("10.245.0.200"))
        );
        assert_eq!(
            p.allocate("a/y", Some(ip("10.245.0.200"))),
            Err(AllocError::Taken(ip("10.245.0.200"), "a/x".into()))
        );
        let err = p
            .allocate("a/y", Some(ip("10.246.0.1")))
            .expect_err("outside");
        assert_eq!(
            err.to_string(),
            "requested address 10.246.0.1 is not in the pool 10.245.0.0/24"
        );
        assert!(
            p.allocate("a/y", Some(ip("10.245.0.255"))).is_err(),
            "broadcast"
        );
        assert!(
            p.allocate("a/y", Some(ip("10.245.0.0"))).is_err(),
            "network"
        );
        // Changing the request moves the allocation.
        assert_eq!(
            p.allocate("a/x", Some(ip("10.245.0.201"))),
            Ok(ip("10.245.0.201"))
        );
        assert!(!p.allocations().contains_key(&ip("10.245.0.200")));
    }

    #[test]
    fn adoption_after_restart() {
        let mut p = pool();
        assert!(p.adopt("a/x", ip("10.245.0.7")));
        assert!(!p.adopt("a/y", ip("10.245.0.7")), "taken");
        assert!(!p.adopt("a/y", ip("10.246.0.7")), "outside");
        assert_eq!(p.address_of("a/x"), Some(ip("10.245.0.7")));
        // New allocations go around adopted addresses.
        assert_eq!(p.allocate("a/z", None), Ok(ip("10.245.0.1")));
    }
}
