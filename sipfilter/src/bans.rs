//! The ban engine: turns offences seen on the wire into timed bans, with fail2ban's semantics.
//!
//! Each offence adds its kind's weight (`[bans] weights`) to the source's sliding window of
//! `find_time`; when the weighted sum reaches `max_failures` the source is banned and its window
//! is cleared. Two more counts live in the same window, from the PBX's answers that the egress
//! watcher reports: challenges (401/407), which ban when more than `max_challenges` of them are
//! not followed by a success, and the distinct user names the PBX rejected (403/404/484), which
//! ban an extension enumerator when there are more than `max_users`, however slowly it works. A
//! success (a granted registration or an authenticated call) clears the source's window.
//!
//! A source banned again while its previous ban ended less than [`ESCALATION_WINDOW`] ago gets
//! double that ban's duration, up to `max_ban_time`. Offences of a banned source are ignored: its
//! packets are dropped anyway, and evidence still in flight when the ban starts must not extend
//! it.
//!
//! A source is the datapath's source key as a network (an IPv4 /32, or an IPv6 address masked to
//! the policy's `ipv6_prefix`); the caller masks, the engine only uses it as a key. Times are
//! wall-clock (`SystemTime`) so that bans written to the state file keep their meaning across a
//! reboot; a clock stepped back only makes offences count, and bans last, a little longer.
//!
//! Memory is bounded whatever the traffic, since sources can be spoofed: at most
//! [`MAX_WINDOWS`] windows holding at most [`MAX_OFFENCES`] offences, challenges and user names
//! in all (beyond either, the windows whose latest offence is oldest are dropped, evidence and
//! all; a window keeps at most one challenge more than `max_challenges` and one name more than
//! `max_users`), offences ban only while fewer than [`MAX_BANS`] bans are active (as many as the
//! datapath's ban map holds; meanwhile they keep counting, and ban once room is made), and at
//! most [`MAX_HISTORY`] past bans are remembered for escalation (the longest-ended are forgotten
//! first). That is a few tens of MB at worst. Everything is ordered by time, so expiry, pruning
//! and eviction cost O(log n) each.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fmt,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use sipfilter_common::capacity;

use crate::{config::Bans, state::format};

/// Offence windows tracked at once.
pub const MAX_WINDOWS: usize = 100_000;
/// Offences held in all windows together: a window holds up to `max_failures` (1000) offences,
/// so the window cap alone would allow 100 million.
pub const MAX_OFFENCES: usize = 1_000_000;
/// Active bans (of any kind) beyond which offences ban no more: what the datapath's ban map
/// holds.
pub const MAX_BANS: usize = capacity::BANS as usize;
/// Past bans remembered for escalation.
pub const MAX_HISTORY: usize = capacity::BANS as usize;
/// A source banned again within this time of the end of its previous ban gets a doubled ban.
pub const ESCALATION_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest ban [`BanEngine::ban`] sets: keeps `until` within the years the state file can
/// write (RFC 3339 ends with year 9999).
pub const MAX_MANUAL_BAN: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// What a source did to earn a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    /// Over a REGISTER or INVITE rate limit.
    RateLimited,
    /// A scanner's User-Agent or From.
    Scanner,
    /// An INVITE to a denied toll-fraud prefix.
    TollFraud,
    /// A request the PBX refused (403, 404, 484).
    Rejection,
}

impl Offence {
    pub const ALL: [Offence; 4] = [
        Offence::RateLimited,
        Offence::Scanner,
        Offence::TollFraud,
        Offence::Rejection,
    ];

    /// The name used in the policy's `weights`, the state file and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Offence::RateLimited => "rate_limited",
            Offence::Scanner => "scanner",
            Offence::TollFraud => "toll_fraud",
            Offence::Rejection => "rejection",
        }
    }

    fn weight(self, policy: &Bans) -> u32 {
        let weights = &policy.weights;
        match self {
            Offence::RateLimited => weights.rate_limited,
            Offence::Scanner => weights.scanner,
            Offence::TollFraud => weights.toll_fraud,
            Offence::Rejection => weights.rejection,
        }
    }
}

/// Why a ban was issued. Written as its [`name`](BanReason::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BanReason {
    /// Offences reached `max_failures`; this is the kind of the one that completed the count.
    Offence(Offence),
    /// More than `max_challenges` challenges without a success.
    Challenges,
    /// Rejections for more than `max_users` distinct user names.
    Enumeration,
    /// An operator's ban.
    Manual,
}

impl BanReason {
    pub const ALL: [BanReason; 7] = [
        BanReason::Offence(Offence::RateLimited),
        BanReason::Offence(Offence::Scanner),
        BanReason::Offence(Offence::TollFraud),
        BanReason::Offence(Offence::Rejection),
        BanReason::Challenges,
        BanReason::Enumeration,
        BanReason::Manual,
    ];

    /// The label of `bans_total{reason}` and the word in the state file.
    pub const fn name(self) -> &'static str {
        match self {
            BanReason::Offence(offence) => offence.name(),
            BanReason::Challenges => "challenges",
            BanReason::Enumeration => "enumeration",
            BanReason::Manual => "manual",
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for BanReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for BanReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &[
            "rate_limited",
            "scanner",
            "toll_fraud",
            "rejection",
            "challenges",
            "enumeration",
            "manual",
        ];
        let name = String::deserialize(deserializer)?;
        BanReason::ALL
            .into_iter()
            .find(|reason| reason.name() == name)
            .ok_or_else(|| de::Error::unknown_variant(&name, NAMES))
    }
}

/// A ban of one source from `since` to `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub source: IpNet,
    #[serde(with = "format::rfc3339")]
    pub since: SystemTime,
    #[serde(with = "format::rfc3339")]
    pub until: SystemTime,
    #[serde(with = "format::duration")]
    pub duration: Duration,
    pub reason: BanReason,
    /// Offences (or challenges, or rejected user names) in the window that led to the ban, each
    /// counted once whatever its weight; 0 for a manual ban.
    pub offences: u32,
}

/// What [`BanEngine::snapshot`] keeps for the state file: the bans, and the past bans that
/// escalation needs. Offence windows and totals are not kept: windows are minutes long, and
/// totals are counters since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanEngineState {
    active: Vec<Ban>,
    history: Vec<PastBan>,
}

impl BanEngineState {
    /// Bans in the snapshot (some may have ended since it was taken).
    pub fn active_count(&self) -> usize {
        self.active.len()
    }
}

/// The last ban of a source that has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PastBan {
    source: IpNet,
    /// When it ended, or, if it was lifted early, when it would have ended.
    #[serde(with = "format::rfc3339")]
    ended: SystemTime,
    #[serde(with = "format::duration")]
    duration: Duration,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct BanEngine {
    policy: Bans,
    /// Offence windows of sources that are not banned, aged by their latest offence.
    windows: Aged<Window>,
    /// Offences in all `windows`.
    offences: usize,
    /// Bans aged by their end, active until [`BanEngine::expire`] removes them.
    bans: Aged<Ban>,
    /// Duration of each source's last ended ban, aged by when it ended.
    history: Aged<Duration>,
    totals: BTreeMap<BanReason, u64>,
}

impl BanEngine {
    pub fn new(policy: &Bans) -> BanEngine {
        BanEngine {
            policy: policy.clone(),
            windows: Aged::default(),
            offences: 0,
            bans: Aged::default(),
            history: Aged::default(),
            // Every reason from the start, so that each `bans_total{reason}` series exists at 0.
            totals: BanReason::ALL
                .into_iter()
                .map(|reason| (reason, 0))
                .collect(),
        }
    }

    /// Takes a reloaded policy. Windows, bans and history are kept; the new thresholds apply
    /// from the next offence and the new durations from the next ban.
    pub fn set_policy(&mut self, policy: &Bans) {
        self.policy = policy.clone();
    }

    /// Records an offence by `source` at `now`. Returns the new ban when this offence makes the
    /// weighted count within `find_time` reach `max_failures`: for `ban_time`, or, if the
    /// source's previous ban ended less than [`ESCALATION_WINDOW`] ago, for twice that ban's
    /// duration (at least `ban_time`, at most `max_ban_time`). Offences of a banned source, of
    /// weight 0, or with bans disabled are ignored.
    pub fn record(&mut self, source: IpNet, offence: Offence, now: SystemTime) -> Option<Ban> {
        let weight = offence.weight(&self.policy);
        if weight == 0 {
            return None;
        }
        self.observe(source, now, |window, policy| {
            window.offend(now, weight, offence, policy)
        })
    }

    /// Records that the PBX refused a request of `source` for `user` (the To user; `None` if
    /// the response named none): an offence of kind [`Offence::Rejection`], and one more name
    /// towards `max_users`. Bans like [`record`](BanEngine::record), with reason
    /// [`BanReason::Enumeration`] when the names are what crossed the line.
    pub fn record_rejection(
        &mut self,
        source: IpNet,
        user: Option<&str>,
        now: SystemTime,
    ) -> Option<Ban> {
        let weight = Offence::Rejection.weight(&self.policy);
        self.observe(source, now, |window, policy| {
            if let Some(user) = user {
                window.name(user, now, policy.max_users as usize + 1);
                if window.users.len() > policy.max_users as usize {
                    return Some((BanReason::Enumeration, window.users.len()));
                }
            }
            if weight == 0 {
                return None;
            }
            window.offend(now, weight, Offence::Rejection, policy)
        })
    }

    /// Records that the PBX challenged a request of `source`. Bans with reason
    /// [`BanReason::Challenges`] when more than `max_challenges` are in the window (a success
    /// clears them: [`record_success`](BanEngine::record_success)).
    pub fn record_challenge(&mut self, source: IpNet, now: SystemTime) -> Option<Ban> {
        self.observe(source, now, |window, policy| {
            let limit = policy.max_challenges as usize;
            window.challenges.push_back(now);
            if window.challenges.len() > limit + 1 {
                window.challenges.pop_front();
            }
            (window.challenges.len() > limit)
                .then_some((BanReason::Challenges, window.challenges.len()))
        })
    }

    /// The PBX granted `source` a registration or an authenticated call: its window (offences,
    /// challenges, rejected names) is cleared. Returns whether there was one.
    pub fn record_success(&mut self, source: &IpNet) -> bool {
        self.take_window(source).is_some()
    }

    /// Adds what `add` records to the window of `source` at `now`, and issues the ban `add`
    /// asks for (its reason, and the evidence it counted).
    fn observe(
        &mut self,
        source: IpNet,
        now: SystemTime,
        add: impl FnOnce(&mut Window, &Bans) -> Option<(BanReason, usize)>,
    ) -> Option<Ban> {
        if !self.policy.enabled || self.is_banned(&source, now) {
            return None;
        }
        let mut window = self.take_window(&source).unwrap_or_default();
        window.slide(now.checked_sub(self.policy.find_time));
        let verdict = add(&mut window, &self.policy);
        let room = self.bans.len() < MAX_BANS || self.bans.get(&source).is_some();
        if let Some((reason, evidence)) = verdict
            && room
        {
            let duration = self.next_duration(&source, now);
            let evidence = u32::try_from(evidence).unwrap_or(u32::MAX);
            return Some(self.issue(source, duration, reason, evidence, now));
        }
        self.offences += window.size();
        self.windows.insert(source, now, window);
        while self.windows.len() > MAX_WINDOWS || self.offences > MAX_OFFENCES {
            let Some((_, evicted)) = self.windows.pop_oldest(|_| true) else {
                break;
            };
            self.offences -= evicted.size();
        }
        None
    }

    /// Bans `source` for `duration` (at most [`MAX_MANUAL_BAN`]) from `now`, replacing any ban
    /// it has, and counts it in [`totals`](BanEngine::totals) under `reason`. Not escalated and
    /// not limited by [`MAX_BANS`]: the operator decides.
    pub fn ban(
        &mut self,
        source: IpNet,
        duration: Duration,
        reason: BanReason,
        now: SystemTime,
    ) -> Ban {
        self.issue(source, duration.min(MAX_MANUAL_BAN), reason, 0, now)
    }

    /// Lifts the ban of `source`. It is remembered as if it had run its course, so a source
    /// that offends again soon after is escalated.
    pub fn unban(&mut self, source: &IpNet) -> Option<Ban> {
        let ban = self.bans.remove(source)?;
        self.remember(&ban);
        Some(ban)
    }

    /// Removes and returns the bans that have ended by `now`, earliest first.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Ban> {
        let mut ended = Vec::new();
        while let Some((_, ban)) = self.bans.pop_oldest(|until| until <= now) {
            self.remember(&ban);
            ended.push(ban);
        }
        ended
    }

    /// The bans, in the order they end. A ban that has ended stays here until
    /// [`expire`](BanEngine::expire) removes it.
    pub fn active(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// Whether `source` itself (the same key, not a network containing it) is banned at `now`.
    pub fn is_banned(&self, source: &IpNet, now: SystemTime) -> bool {
        self.bans.get(source).is_some_and(|ban| ban.until > now)
    }

    /// Bans issued since the engine was created, by reason; every reason is present.
    pub fn totals(&self) -> &BTreeMap<BanReason, u64> {
        &self.totals
    }

    /// Forgets what can no longer matter at `now`: windows whose latest offence is older than
    /// `find_time`, and past bans that ended more than [`ESCALATION_WINDOW`] ago.
    pub fn prune(&mut self, now: SystemTime) {
        let find_time = self.policy.find_time;
        while let Some((_, window)) = self
            .windows
            .pop_oldest(|latest| latest.checked_add(find_time).is_some_and(|end| end <= now))
        {
            self.offences -= window.size();
        }
        while self
            .history
            .pop_oldest(|ended| {
                ended
                    .checked_add(ESCALATION_WINDOW)
                    .is_some_and(|end| end <= now)
            })
            .is_some()
        {}
    }

    pub fn snapshot(&self) -> BanEngineState {
        BanEngineState {
            active: self.bans.values().cloned().collect(),
            history: self
                .history
                .iter()
                .map(|(source, ended, duration)| PastBan {
                    source: *source,
                    ended,
                    duration: *duration,
                })
                .collect(),
        }
    }

    /// An engine with the bans and history of `state` (bans that ended meanwhile are left for
    /// [`expire`](BanEngine::expire) to report), and no offence windows.
    pub fn restore(state: BanEngineState, policy: &Bans) -> BanEngine {
        let mut engine = BanEngine::new(policy);
        for past in state.history {
            engine
                .history
                .insert(past.source, past.ended, past.duration);
        }
        while engine.history.len() > MAX_HISTORY {
            engine.history.pop_oldest(|_| true);
        }
        for ban in state.active {
            engine.bans.insert(ban.source, ban.until, ban);
        }
        engine
    }

    fn take_window(&mut self, source: &IpNet) -> Option<Window> {
        let window = self.windows.remove(source)?;
        self.offences -= window.size();
        Some(window)
    }

    /// `ban_time`, or double the previous ban if it ended (or, if lifted, would have ended)
    /// less than a day ago. A ban that has ended but is not yet expired counts as previous.
    fn next_duration(&self, source: &IpNet, now: SystemTime) -> Duration {
        let previous = match self.bans.entry(source) {
            Some((until, ban)) => Some((until, ban.duration)),
            None => self.history.entry(source).map(|(ended, &d)| (ended, d)),
        };
        let recent = previous.filter(|(ended, _)| {
            ended
                .checked_add(ESCALATION_WINDOW)
                .is_none_or(|end| end > now)
        });
        match recent {
            Some((_, duration)) => duration
                .saturating_mul(2)
                .max(self.policy.ban_time)
                .min(self.policy.max_ban_time),
            None => self.policy.ban_time,
        }
    }

    fn issue(
        &mut self,
        source: IpNet,
        duration: Duration,
        reason: BanReason,
        offences: u32,
        now: SystemTime,
    ) -> Ban {
        if let Some(replaced) = self.bans.remove(&source) {
            self.remember(&replaced);
        }
        // Evidence is used up by the ban, and nothing is recorded while it lasts.
        self.take_window(&source);
        // Beyond what SystemTime holds only with a broken clock; the ban then ends at once
        // rather than never.
        let until = now.checked_add(duration).unwrap_or(now);
        let ban = Ban {
            source,
            since: now,
            until,
            duration,
            reason,
            offences,
        };
        self.bans.insert(source, until, ban.clone());
        *self.totals.entry(reason).or_default() += 1;
        ban
    }

    fn remember(&mut self, ban: &Ban) {
        self.history.insert(ban.source, ban.until, ban.duration);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_oldest(|_| true);
        }
    }
}

/// One source's evidence within `find_time`, oldest first.
#[derive(Debug, Clone, Default)]
struct Window {
    /// Offences with their weights.
    offences: VecDeque<(SystemTime, u32)>,
    /// Sum of the weights in `offences`.
    total: u64,
    /// Challenges not (yet) followed by a success.
    challenges: VecDeque<SystemTime>,
    /// Distinct user names rejected, each with when it was last rejected.
    users: VecDeque<(String, SystemTime)>,
}

impl Window {
    /// Entries held, for the engine's memory bound.
    fn size(&self) -> usize {
        self.offences.len() + self.challenges.len() + self.users.len()
    }

    /// Drops the evidence at or before `cutoff` (`None`: the window reaches before the epoch).
    fn slide(&mut self, cutoff: Option<SystemTime>) {
        let Some(cutoff) = cutoff else {
            return;
        };
        while let Some(&(when, weight)) = self.offences.front()
            && when <= cutoff
        {
            self.offences.pop_front();
            self.total -= u64::from(weight);
        }
        while self.challenges.front().is_some_and(|&when| when <= cutoff) {
            self.challenges.pop_front();
        }
        self.users.retain(|&(_, when)| when > cutoff);
    }

    /// Adds an offence; the ban it completes, if any.
    fn offend(
        &mut self,
        when: SystemTime,
        weight: u32,
        offence: Offence,
        policy: &Bans,
    ) -> Option<(BanReason, usize)> {
        self.offences.push_back((when, weight));
        self.total += u64::from(weight);
        (self.total >= u64::from(policy.max_failures))
            .then_some((BanReason::Offence(offence), self.offences.len()))
    }

    /// Notes a rejected user name, keeping at most `keep` names (the most recently rejected).
    fn name(&mut self, user: &str, when: SystemTime, keep: usize) {
        self.users.retain(|(name, _)| name != user);
        self.users.push_back((user.to_owned(), when));
        while self.users.len() > keep {
            self.users.pop_front();
        }
    }
}

/// Values keyed by source and ordered by a time, so that the oldest is found in O(log n).
#[derive(Debug, Clone)]
struct Aged<T> {
    items: HashMap<IpNet, (SystemTime, T)>,
    order: BTreeSet<(SystemTime, IpNet)>,
}

impl<T> Default for Aged<T> {
    fn default() -> Self {
        Aged {
            items: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<T> Aged<T> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, key: &IpNet) -> Option<&T> {
        self.items.get(key).map(|(_, value)| value)
    }

    fn entry(&self, key: &IpNet) -> Option<(SystemTime, &T)> {
        self.items.get(key).map(|(at, value)| (*at, value))
    }

    /// Inserts or replaces the value of `key`, aged `at`.
    fn insert(&mut self, key: IpNet, at: SystemTime, value: T) {
        if let Some((old, _)) = self.items.insert(key, (at, value)) {
            self.order.remove(&(old, key));
        }
        self.order.insert((at, key));
    }

    fn remove(&mut self, key: &IpNet) -> Option<T> {
        let (at, value) = self.items.remove(key)?;
        self.order.remove(&(at, *key));
        Some(value)
    }

    /// Removes and returns the oldest entry if `due` says yes to its time.
    fn pop_oldest(&mut self, due: impl FnOnce(SystemTime) -> bool) -> Option<(IpNet, T)> {
        let &(at, key) = self.order.first()?;
        if !due(at) {
            return None;
        }
        self.order.pop_first();
        let (_, value) = self.items.remove(&key).expect("order and items agree");
        Some((key, value))
    }

    /// Entries oldest first.
    fn iter(&self) -> impl Iterator<Item = (&IpNet, SystemTime, &T)> {
        self.order
            .iter()
            .map(|(at, key)| (key, *at, &self.items[key].1))
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, _, value)| value)
    }
}

#[cfg(test)]
mod tests;
