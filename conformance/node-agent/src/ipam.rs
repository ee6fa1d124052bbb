//! Pod IP allocation from the pod CIDR, persisted in the state directory.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub base: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (ip, len) = s
            .split_once('/')
            .with_context(|| format!("CIDR {s:?} has no '/'"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .with_context(|| format!("CIDR {s:?}: bad address"))?;
        let prefix: u8 = len
            .parse()
            .with_context(|| format!("CIDR {s:?}: bad prefix"))?;
        if !(8..=30).contains(&prefix) {
            bail!("CIDR {s:?}: prefix must be between 8 and 30");
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Allocations (IP → pod UID), stored as JSON.
#[derive(Debug)]
pub struct Ipam {
    cidr: Cidr,
    path: Option<PathBuf>,
    used: BTreeMap<Ipv4Addr, String>,
}

impl Ipam {
    /// An allocator with no persistence (for tests).
    #[cfg(test)]
    pub fn in_memory(cidr: Cidr) -> Self {
        Self {
            cidr,
            path: None,
            used: BTreeMap::new(),
        }
    }

    /// Loads the allocations file in `state_dir` (or starts empty).
    pub fn load(cidr: Cidr, state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("ipam.json");
        let used = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            cidr,
            path: Some(path),
            used,
        })
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.used).context("encoding allocations")?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// The IP of `uid`, allocating the lowest free one if it has none.
    /// The network address, the gateway (.1) and the broadcast address are
    /// never handed out.
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr> {
        if let Some((ip, _)) = self.used.iter().find(|(_, u)| u.as_str() == uid) {
            return Ok(*ip);
        }
        let base = u32::from(self.cidr.base);
        let size = 1u32 << (32 - self.cidr.prefix);
        let ip = (2..size - 1)
            .map(|off| Ipv4Addr::from(base + off))
            .find(|ip| !self.used.contains_key(ip))
            .with_context(|| format!("pod CIDR {} is exhausted", self.cidr))?;
        self.used.insert(ip, uid.to_string());
        self.save()?;
        Ok(ip)
    }

    /// Frees the IP of `uid`, if any.
    pub fn release(&mut self, uid: &str) -> Result<()> {
        let before = self.used.len();
        self.used.retain(|_, u| u != uid);
        if self.used.len() != before {
            self.save()
        } else {
            Ok(())
        }
    }

    /// Frees every IP whose owner is not in `live`.
    pub fn retain_owners(&mut self, live: &dyn Fn(&str) -> bool) -> Result<()> {
        let before = self.used.len();
        self.used.retain(|_, u| live(u));
        if self.used.len() != before {
            self.save()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let c: Cidr = "10.244.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!("10.244.0.0".parse::<Cidr>().is_err());
        assert!("10.244.0.0/32".parse::<Cidr>().is_err());
    }

    #[test]
    fn skips_network_and_gateway_and_reuses_per_uid() {
        let mut ipam = Ipam::in_memory("10.244.0.0/16".parse().unwrap());
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(ipam.allocate("b").unwrap(), Ipv4Addr::new(10, 244, 0, 3));
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate("c").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut ipam = Ipam::in_memory("10.0.0.0/30".parse().unwrap());
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(ipam.allocate("b").is_err());
    }

    #[test]
    fn persists_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Cidr = "10.244.0.0/16".parse().unwrap();
        let mut ipam = Ipam::load(cidr, dir.path()).unwrap();
        ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        let mut again = Ipam::load(cidr, dir.path()).unwrap();
        assert_eq!(again.allocate("c").unwrap(), Ipv4Addr::new(10, 244, 0, 4));
        again.retain_owners(&|u| u != "a").unwrap();
        let mut third = Ipam::load(cidr, dir.path()).unwrap();
        assert_eq!(third.allocate("d").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
    }
}
