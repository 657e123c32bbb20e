//! Learned trust ("responsive" mode, as FreePBX's Responsive Firewall): a source address the PBX
//! grants a registration is trusted for the registration's lifetime plus a grace period. The
//! daemon writes each entry into the allow set with its expiry (the kernel stops trusting the
//! address on time even while no daemon runs) and persists the table like bans.
//!
//! Trust is per source address, not per phone: behind a NAT, one phone's registration makes its
//! public address trusted, and every phone behind it then skips the rate limits and reaches a
//! PBX whose SIP ports are allowlist-only. Bounded: at most [`MAX_LEARNED`] addresses; when
//! full, a new address is not learned (it keeps the untrusted treatment) until entries expire.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::state::format;

/// Addresses trusted at once: a quarter of an allow trie, so learned entries can never crowd
/// out the operator's own.
pub const MAX_LEARNED: usize = sipfilter_common::capacity::SOURCE_LISTS as usize / 4;

/// Lifetime assumed when the PBX's answer gives none (RFC 3261 section 10.2.1.1 suggests 3600 s
/// as the default registration).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// One trusted address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    pub address: IpAddr,
    /// The account whose registration earned the trust (the To user), if the answer named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// First granted registration of this trust period.
    #[serde(with = "format::rfc3339")]
    pub since: SystemTime,
    #[serde(with = "format::rfc3339")]
    pub until: SystemTime,
}

/// What [`LearnedTrust::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learning {
    /// A new address is trusted.
    New,
    /// A trusted address's expiry moved later.
    Extended,
    /// Nothing changed (the expiry was already later, or the table is full).
    Unchanged,
}

#[derive(Debug, Clone, Default)]
pub struct LearnedTrust {
    entries: BTreeMap<IpAddr, Learned>,
}

impl LearnedTrust {
    pub fn restore(entries: Vec<Learned>, now: SystemTime) -> LearnedTrust {
        let mut trust = LearnedTrust::default();
        for entry in entries.into_iter().filter(|entry| entry.until > now) {
            if trust.entries.len() < MAX_LEARNED {
                trust.entries.insert(entry.address, entry);
            }
        }
        trust
    }

    /// A registration of `address` for `user` was granted at `now` for `lifetime` (the PBX's
    /// answer, else [`DEFAULT_LIFETIME`]): trust it until `now + lifetime + grace`.
    pub fn learn(
        &mut self,
        address: IpAddr,
        user: Option<&str>,
        lifetime: Option<Duration>,
        grace: Duration,
        now: SystemTime,
    ) -> Learning {
        let lifetime = lifetime.unwrap_or(DEFAULT_LIFETIME);
        let until = now
            .checked_add(lifetime.saturating_add(grace))
            .unwrap_or(now);
        if let Some(entry) = self.entries.get_mut(&address) {
            if until <= entry.until {
                return Learning::Unchanged;
            }
            entry.until = until;
            if let Some(user) = user {
                entry.user = Some(user.to_owned());
            }
            return Learning::Extended;
        }
        if self.entries.len() >= MAX_LEARNED {
            return Learning::Unchanged;
        }
        self.entries.insert(
            address,
            Learned {
                address,
                user: user.map(str::to_owned),
                since: now,
                until,
            },
        );
        Learning::New
    }

    /// Removes and returns the entries whose trust has ended by `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Learned> {
        let ended: Vec<IpAddr> = self
            .entries
            .values()
            .filter(|entry| entry.until <= now)
            .map(|entry| entry.address)
            .collect();
        ended
            .iter()
            .filter_map(|address| self.entries.remove(address))
            .collect()
    }

    /// When the trust of `address` ends, if it is learned.
    pub fn until(&self, address: IpAddr) -> Option<SystemTime> {
        self.entries.get(&address).map(|entry| entry.until)
    }

    /// Whether `address` is trusted at `now`.
    pub fn is_trusted(&self, address: IpAddr, now: SystemTime) -> bool {
        self.entries
            .get(&address)
            .is_some_and(|entry| entry.until > now)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Learned> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets `address` (an operator's `sipfilter remove`); whether it was trusted.
    pub fn forget(&mut self, address: IpAddr) -> bool {
        self.entries.remove(&address).is_some()
    }

    /// Forgets every entry (responsive mode switched off).
    pub fn clear(&mut self) -> usize {
        let count = self.entries.len();
        self.entries.clear();
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000 + n)
    }

    const PHONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 20));
    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn trust_lasts_the_registration_plus_grace_and_extends() {
        let mut trust = LearnedTrust::default();
        let lifetime = Some(Duration::from_secs(600));
        assert_eq!(
            trust.learn(PHONE, Some("1001"), lifetime, GRACE, at(0)),
            Learning::New
        );
        assert!(trust.is_trusted(PHONE, at(899)));
        assert!(!trust.is_trusted(PHONE, at(900)));
        // Re-registering halfway moves the end; an earlier end does not shorten it.
        assert_eq!(
            trust.learn(PHONE, None, lifetime, GRACE, at(300)),
            Learning::Extended
        );
        assert_eq!(
            trust.learn(PHONE, None, Some(Duration::from_secs(10)), GRACE, at(301)),
            Learning::Unchanged
        );
        let entry = trust.entries().next().unwrap();
        assert_eq!((entry.since, entry.until), (at(0), at(1200)));
        assert_eq!(entry.user.as_deref(), Some("1001"));
        assert_eq!(trust.until(PHONE), Some(at(1200)));
        assert_eq!(trust.expire(at(1199)), []);
        assert_eq!(trust.expire(at(1200)).len(), 1);
        assert!(trust.is_empty());
    }

    #[test]
    fn no_lifetime_means_the_rfc_default() {
        let mut trust = LearnedTrust::default();
        trust.learn(PHONE, None, None, Duration::ZERO, at(0));
        assert!(trust.is_trusted(PHONE, at(3599)));
        assert!(!trust.is_trusted(PHONE, at(3600)));
    }

    #[test]
    fn bounded_and_restored_without_expired_entries() {
        let mut trust = LearnedTrust::default();
        for n in 0..MAX_LEARNED as u32 + 10 {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            trust.learn(address, None, None, GRACE, at(u64::from(n % 2)));
        }
        assert_eq!(trust.len(), MAX_LEARNED);
        let entries: Vec<Learned> = trust.entries().cloned().collect();
        let restored = LearnedTrust::restore(entries, at(3600 + 300));
        assert_eq!(
            restored.len(),
            MAX_LEARNED / 2,
            "those learned at 0 have expired"
        );
    }
}
