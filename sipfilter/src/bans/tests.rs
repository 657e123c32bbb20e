use std::net::Ipv6Addr;

use super::*;
use crate::config::OffenceWeights;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A synthetic wall clock: `n` seconds after 2025-06-15T15:06:40Z.
fn at(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(1_750_000_000 + n)
}

/// The built-in policy but escalation capped at 3 h, so the tests reach the cap quickly.
fn policy() -> Bans {
    Bans {
        max_ban_time: secs(3 * HOUR),
        ..Bans::default()
    }
}

fn v4(n: u32) -> IpNet {
    IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
        0xc000_0200 + n,
    )))
}

/// Records `count` offences of `offence`, one per second from `start`; returns the bans.
fn offend(
    engine: &mut BanEngine,
    source: IpNet,
    offence: Offence,
    count: u64,
    start: u64,
) -> Vec<Ban> {
    (0..count)
        .filter_map(|i| engine.record(source, offence, at(start + i)))
        .collect()
}

/// Gets `source` banned by scanner offences (weight 5 = max_failures) at `now`.
#[track_caller]
fn ban_now(engine: &mut BanEngine, source: IpNet, now: u64) -> Ban {
    engine
        .record(source, Offence::Scanner, at(now))
        .expect("a scanner offence bans")
}

#[test]
fn threshold_counts_weights() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    assert_eq!(offend(&mut engine, source, Offence::RateLimited, 4, 0), []);
    assert!(!engine.is_banned(&source, at(4)));
    let ban = engine.record(source, Offence::Rejection, at(10)).unwrap();
    assert_eq!(
        ban,
        Ban {
            source,
            since: at(10),
            until: at(10 + HOUR),
            duration: secs(HOUR),
            reason: BanReason::Offence(Offence::Rejection),
            offences: 5,
        }
    );
    assert!(engine.is_banned(&source, at(10)));
    assert!(engine.is_banned(&source, at(10 + HOUR - 1)));
    assert!(!engine.is_banned(&source, at(10 + HOUR)));

    // One scanner or toll-fraud offence weighs as much as max_failures.
    assert_eq!(ban_now(&mut engine, v4(2), 0).offences, 1);
    let ban = engine.record(v4(3), Offence::TollFraud, at(0)).unwrap();
    assert_eq!(ban.reason, BanReason::Offence(Offence::TollFraud));

    // Weights add up; the offence that completes the count names the ban.
    let mut engine = BanEngine::new(&Bans {
        weights: OffenceWeights {
            rate_limited: 1,
            scanner: 2,
            toll_fraud: 3,
            rejection: 1,
        },
        ..policy()
    });
    assert_eq!(engine.record(source, Offence::Scanner, at(0)), None);
    assert_eq!(engine.record(source, Offence::Scanner, at(1)), None);
    let ban = engine.record(source, Offence::RateLimited, at(2)).unwrap();
    assert_eq!(ban.reason, BanReason::Offence(Offence::RateLimited));
    assert_eq!(ban.offences, 3);
    // Overshooting the threshold bans too.
    assert_eq!(engine.record(v4(2), Offence::Scanner, at(0)), None);
    assert_eq!(engine.record(v4(2), Offence::Scanner, at(0)), None);
    assert!(engine.record(v4(2), Offence::TollFraud, at(0)).is_some());
}

#[test]
fn zero_weight_and_disabled_are_ignored() {
    let mut engine = BanEngine::new(&Bans {
        weights: OffenceWeights {
            rate_limited: 0,
            ..OffenceWeights::default()
        },
        ..policy()
    });
    assert_eq!(offend(&mut engine, v4(1), Offence::RateLimited, 100, 0), []);
    // Not even tracked: a flood of ignored offences costs no memory.
    assert_eq!(engine.windows.len(), 0);
    assert_eq!(engine.offences, 0);

    let mut engine = BanEngine::new(&Bans {
        enabled: false,
        ..policy()
    });
    assert_eq!(offend(&mut engine, v4(1), Offence::Scanner, 10, 0), []);
    assert_eq!(engine.windows.len(), 0);
    // Manual bans still work.
    let ban = engine.ban(v4(1), secs(MINUTE), BanReason::Manual, at(0));
    assert!(engine.is_banned(&v4(1), at(1)));
    assert_eq!(ban.offences, 0);
}

#[test]
fn old_offences_slide_out_of_the_window() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    // find_time is 10 min: offences at 0, 100, 200, 300.
    for t in [0, 100, 200, 300] {
        assert_eq!(engine.record(source, Offence::RateLimited, at(t)), None);
    }
    // Exactly find_time after the first, it is out: still 4.
    assert_eq!(
        engine.record(source, Offence::RateLimited, at(10 * MINUTE)),
        None
    );
    // 5 within (t - 10 min, t]: 100, 200, 300, 600, 650.
    let ban = engine
        .record(source, Offence::RateLimited, at(650))
        .unwrap();
    assert_eq!(ban.offences, 5);

    // Spread out, offences never add up.
    let mut engine = BanEngine::new(&policy());
    for i in 0..100 {
        assert_eq!(engine.record(v4(2), Offence::Rejection, at(i * 150)), None);
    }
    assert_eq!(engine.offences, 4);
}

#[test]
fn escalation_doubles_up_to_the_cap() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    let mut now = 0;
    let mut durations = Vec::new();
    for _ in 0..4 {
        let ban = ban_now(&mut engine, source, now);
        durations.push(ban.duration);
        // Back an hour after the ban ends.
        now = ban.until.duration_since(at(0)).unwrap().as_secs() + HOUR;
        assert_eq!(engine.expire(ban.until - secs(1)), []);
        assert_eq!(engine.expire(ban.until), [ban]);
    }
    assert_eq!(
        durations,
        [secs(HOUR), secs(2 * HOUR), secs(3 * HOUR), secs(3 * HOUR)]
    );
}

#[test]
fn no_escalation_after_a_day() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    let first = ban_now(&mut engine, source, 0);
    engine.expire(first.until);
    // Just under a day after the end: doubled.
    let second = ban_now(&mut engine, source, HOUR + DAY - 1);
    assert_eq!(second.duration, secs(2 * HOUR));
    engine.expire(second.until);
    // A day after the end of the second: back to ban_time.
    let end = HOUR + DAY - 1 + 2 * HOUR;
    let third = ban_now(&mut engine, source, end + DAY);
    assert_eq!(third.duration, secs(HOUR));
}

#[test]
fn a_ban_ended_but_not_expired_still_escalates() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    let first = ban_now(&mut engine, source, 0);
    // The daemon has not called expire yet; the source offends again after the end.
    assert!(!engine.is_banned(&source, first.until));
    let second = ban_now(&mut engine, source, HOUR + 5);
    assert_eq!(second.duration, secs(2 * HOUR));
    // The new ban replaced the old: one ban, which expire reports once.
    assert_eq!(engine.active().collect::<Vec<_>>(), [&second]);
    assert_eq!(engine.expire(at(DAY)), [second]);
}

#[test]
fn offences_while_banned_are_ignored() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    let ban = ban_now(&mut engine, source, 0);
    for t in 1..100 {
        assert_eq!(engine.record(source, Offence::Scanner, at(t)), None);
        assert_eq!(engine.record(source, Offence::RateLimited, at(t)), None);
    }
    // Neither extended nor counted towards the next ban.
    assert_eq!(engine.active().collect::<Vec<_>>(), [&ban]);
    assert_eq!(engine.windows.len(), 0);
    assert_eq!(engine.expire(ban.until), [ban]);
    let after = HOUR;
    assert_eq!(
        offend(&mut engine, source, Offence::RateLimited, 4, after),
        []
    );
    let second = engine.record(source, Offence::RateLimited, at(after + 4));
    assert_eq!(second.unwrap().duration, secs(2 * HOUR));
}

#[test]
fn unban_keeps_history_for_escalation() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    assert_eq!(engine.unban(&source), None);
    let ban = ban_now(&mut engine, source, 0);
    assert_eq!(engine.unban(&source), Some(ban));
    assert!(!engine.is_banned(&source, at(1)));
    assert_eq!(engine.active().count(), 0);
    // Lifted after 10 min, back 10 min later: doubled.
    let second = ban_now(&mut engine, source, 20 * MINUTE);
    assert_eq!(second.duration, secs(2 * HOUR));
    // A lifted ban counts as if it had run its course: escalated until a day after its
    // scheduled end.
    engine.unban(&source);
    let end = 20 * MINUTE + 2 * HOUR;
    assert_eq!(
        ban_now(&mut engine, source, end + DAY - 1).duration,
        secs(3 * HOUR)
    );
}

#[test]
fn manual_bans() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    let ban = engine.ban(source, secs(30 * MINUTE), BanReason::Manual, at(0));
    assert_eq!(
        ban,
        Ban {
            source,
            since: at(0),
            until: at(30 * MINUTE),
            duration: secs(30 * MINUTE),
            reason: BanReason::Manual,
            offences: 0,
        }
    );
    assert_eq!(engine.record(source, Offence::Scanner, at(1)), None);
    // A manual ban replaces the current one, shorter or longer, and is not escalated.
    let longer = engine.ban(source, secs(5 * DAY), BanReason::Manual, at(60));
    assert_eq!(longer.duration, secs(5 * DAY));
    assert_eq!(engine.active().collect::<Vec<_>>(), [&longer]);
    engine.expire(longer.until);
    // After it, an offence ban doubles it, within the policy's bounds.
    let next = ban_now(&mut engine, source, 5 * DAY + 120);
    assert_eq!(next.duration, secs(3 * HOUR));
    // Short manual bans escalate to at least ban_time.
    engine.ban(v4(2), secs(MINUTE), BanReason::Manual, at(0));
    engine.expire(at(MINUTE));
    assert_eq!(ban_now(&mut engine, v4(2), 2 * MINUTE).duration, secs(HOUR));
    // Durations are capped so that the end stays writable.
    let forever = engine.ban(v4(3), Duration::MAX, BanReason::Manual, at(0));
    assert_eq!(forever.duration, MAX_MANUAL_BAN);
    assert_eq!(forever.until, at(0) + MAX_MANUAL_BAN);
}

#[test]
fn expire_returns_ended_bans_in_order() {
    let mut engine = BanEngine::new(&policy());
    let a = engine.ban(v4(1), secs(3 * MINUTE), BanReason::Manual, at(0));
    let b = engine.ban(v4(2), secs(MINUTE), BanReason::Manual, at(0));
    let c = ban_now(&mut engine, v4(3), 0);
    let d = engine.ban(v4(4), secs(2 * MINUTE), BanReason::Manual, at(0));
    assert_eq!(engine.active().collect::<Vec<_>>(), [&b, &d, &a, &c]);
    assert_eq!(engine.expire(at(0)), []);
    assert_eq!(engine.expire(at(2 * MINUTE)), [b, d]);
    assert_eq!(engine.expire(at(2 * MINUTE)), []);
    assert_eq!(engine.active().collect::<Vec<_>>(), [&a, &c]);
    assert!(engine.is_banned(&v4(1), at(2 * MINUTE)));
    assert!(!engine.is_banned(&v4(2), at(2 * MINUTE)));
    assert_eq!(engine.expire(at(DAY)), [a, c]);
    assert_eq!(engine.active().count(), 0);
}

#[test]
fn totals_by_reason() {
    let mut engine = BanEngine::new(&policy());
    let names: Vec<String> = engine.totals().keys().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "rate_limited",
            "scanner",
            "toll_fraud",
            "rejection",
            "challenges",
            "enumeration",
            "manual"
        ]
    );
    assert!(engine.totals().values().all(|&count| count == 0));
    ban_now(&mut engine, v4(1), 0);
    ban_now(&mut engine, v4(2), 0);
    offend(&mut engine, v4(3), Offence::RateLimited, 5, 0);
    engine.ban(v4(4), secs(MINUTE), BanReason::Manual, at(0));
    let totals = engine.totals();
    assert_eq!(totals[&BanReason::Offence(Offence::Scanner)], 2);
    assert_eq!(totals[&BanReason::Offence(Offence::RateLimited)], 1);
    assert_eq!(totals[&BanReason::Offence(Offence::TollFraud)], 0);
    assert_eq!(totals[&BanReason::Manual], 1);
    // Counted when issued, whatever happens to the ban after.
    engine.unban(&v4(1));
    engine.expire(at(DAY));
    assert_eq!(engine.totals()[&BanReason::Offence(Offence::Scanner)], 2);
}

#[test]
fn prune_forgets_stale_windows_and_history() {
    let mut engine = BanEngine::new(&policy());
    offend(&mut engine, v4(1), Offence::RateLimited, 3, 0);
    offend(&mut engine, v4(2), Offence::RateLimited, 2, 5 * MINUTE);
    let ban = ban_now(&mut engine, v4(3), 0);
    engine.expire(ban.until);
    engine.prune(at(10 * MINUTE + 2));
    // v4(1)'s latest offence (at 2 s) is 10 min old: gone; v4(2)'s stays.
    assert_eq!(engine.windows.len(), 1);
    assert_eq!(engine.offences, 2);
    assert_eq!(engine.history.len(), 1);
    // A day after v4(3)'s ban ended, its history goes too, and so does escalation.
    engine.prune(ban.until + ESCALATION_WINDOW - secs(1));
    assert_eq!(engine.history.len(), 1);
    engine.prune(ban.until + ESCALATION_WINDOW);
    assert_eq!(engine.history.len(), 0);
    assert_eq!(engine.windows.len(), 0);
    assert_eq!(engine.offences, 0);
    // Active bans are expire's business.
    let active = ban_now(&mut engine, v4(4), 0);
    engine.prune(at(365 * DAY));
    assert_eq!(engine.active().collect::<Vec<_>>(), [&active]);
}

#[test]
fn windows_are_capped_oldest_first() {
    let mut engine = BanEngine::new(&policy());
    let extra = 10;
    for n in 0..MAX_WINDOWS as u32 + extra {
        // Distinct IPv6 /64 keys, one offence each, in time order.
        let addr = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n) << 64);
        let source = IpNet::new(addr.into(), 64).unwrap();
        engine.record(source, Offence::RateLimited, at(u64::from(n) / 1000));
    }
    assert_eq!(engine.windows.len(), MAX_WINDOWS);
    assert_eq!(engine.offences, MAX_WINDOWS);
    let first = |n: u128| IpNet::new(Ipv6Addr::from(0x2001_0db8_u128 << 96 | n << 64).into(), 64);
    // The first sources were evicted, the latest kept.
    assert!(engine.windows.get(&first(0).unwrap()).is_none());
    assert!(
        engine
            .windows
            .get(&first(u128::from(extra) - 1).unwrap())
            .is_none()
    );
    assert!(
        engine
            .windows
            .get(&first(u128::from(extra)).unwrap())
            .is_some()
    );
}

#[test]
fn offences_are_capped() {
    let mut engine = BanEngine::new(&Bans {
        max_failures: 1000,
        find_time: secs(7 * DAY),
        ..policy()
    });
    // 999 offences per source (one short of a ban), for just over MAX_OFFENCES in all.
    let sources = MAX_OFFENCES / 999 + 2;
    for n in 0..sources as u32 {
        for i in 0..999 {
            let now = at(u64::from(n) * 1000 + i);
            assert_eq!(engine.record(v4(n), Offence::RateLimited, now), None);
        }
    }
    assert!(engine.offences <= MAX_OFFENCES, "{}", engine.offences);
    assert_eq!(engine.offences, engine.windows.len() * 999);
    assert!(engine.windows.get(&v4(0)).is_none());
    assert!(engine.windows.get(&v4(sources as u32 - 1)).is_some());
}

#[test]
fn offence_bans_are_capped_at_the_datapath_capacity() {
    let mut engine = BanEngine::new(&policy());
    for n in 0..MAX_BANS as u32 {
        ban_now(&mut engine, v4(n), 0);
    }
    let late = v4(MAX_BANS as u32);
    assert_eq!(engine.record(late, Offence::Scanner, at(1)), None);
    assert_eq!(engine.active().count(), MAX_BANS);
    // Manual bans are the operator's call.
    let operator: IpNet = "198.51.100.1/32".parse().unwrap();
    engine.ban(operator, secs(MINUTE), BanReason::Manual, at(1));
    assert_eq!(engine.active().count(), MAX_BANS + 1);
    engine.unban(&operator);
    // Once there is room, the evidence kept meanwhile bans at the next offence.
    engine.unban(&v4(0));
    let ban = engine.record(late, Offence::RateLimited, at(2)).unwrap();
    assert_eq!(ban.offences, 2);
}

#[test]
fn snapshot_and_restore() {
    let mut engine = BanEngine::new(&policy());
    let active = ban_now(&mut engine, v4(1), 0);
    let manual = engine.ban(
        "2001:db8:1:2::/64".parse().unwrap(),
        secs(2 * DAY),
        BanReason::Manual,
        at(0),
    );
    let past = ban_now(&mut engine, v4(2), 0);
    engine.unban(&past.source);
    offend(&mut engine, v4(3), Offence::RateLimited, 4, 0);

    let state = engine.snapshot();
    assert_eq!(state.active_count(), 2);
    let json = serde_json::to_string(&state).unwrap();
    let read: BanEngineState = serde_json::from_str(&json).unwrap();
    assert_eq!(read, state);

    let mut restored = BanEngine::restore(read, &policy());
    assert_eq!(restored.snapshot(), state);
    assert_eq!(restored.active().collect::<Vec<_>>(), [&active, &manual]);
    assert!(restored.is_banned(&manual.source, at(DAY)));
    // History survives: v4(2) is escalated. Windows do not: v4(3) starts over.
    assert_eq!(ban_now(&mut restored, v4(2), 60).duration, secs(2 * HOUR));
    assert_eq!(restored.record(v4(3), Offence::RateLimited, at(60)), None);
    // Totals count from the restart.
    assert_eq!(restored.totals()[&BanReason::Manual], 0);
    // Bans that ended while the daemon was down are reported by the first expire.
    assert_eq!(restored.expire(at(HOUR)), [active]);
}

#[test]
fn state_format() {
    let mut engine = BanEngine::new(&policy());
    let ban = ban_now(&mut engine, v4(7), 0);
    engine.ban(v4(8), secs(90 * MINUTE), BanReason::Manual, at(1));
    engine.unban(&v4(8));
    let json = serde_json::to_value(engine.snapshot()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "active": [{
                "source": "192.0.2.7/32",
                "since": "2025-06-15T15:06:40Z",
                "until": "2025-06-15T16:06:40Z",
                "duration": "1h",
                "reason": "scanner",
                "offences": 1,
            }],
            "history": [{
                "source": "192.0.2.8/32",
                "ended": "2025-06-15T16:36:41Z",
                "duration": "1h 30m",
            }],
        })
    );
    assert_eq!(ban.since, at(0));
    // Fractions of a second survive.
    let precise = Ban {
        since: at(0) + Duration::from_nanos(1),
        duration: Duration::from_millis(1500),
        ..ban
    };
    let text = serde_json::to_string(&precise).unwrap();
    assert!(
        text.contains("\"2025-06-15T15:06:40.000000001Z\""),
        "{text}"
    );
    assert!(text.contains("\"1s 500ms\""), "{text}");
    assert_eq!(serde_json::from_str::<Ban>(&text).unwrap(), precise);
}

#[test]
fn reason_and_offence_names() {
    for offence in Offence::ALL {
        let json = serde_json::to_string(&offence).unwrap();
        assert_eq!(json, format!("\"{}\"", offence.name()));
        assert_eq!(serde_json::from_str::<Offence>(&json).unwrap(), offence);
    }
    for reason in BanReason::ALL {
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(json, format!("\"{reason}\""));
        assert_eq!(serde_json::from_str::<BanReason>(&json).unwrap(), reason);
    }
    let error = serde_json::from_str::<BanReason>("\"flood\"").unwrap_err();
    assert!(
        error.to_string().contains("unknown variant `flood`"),
        "{error}"
    );
}

#[test]
fn set_policy_keeps_bans_and_history() {
    let mut engine = BanEngine::new(&policy());
    let active = ban_now(&mut engine, v4(1), 0);
    let past = ban_now(&mut engine, v4(2), 0);
    engine.unban(&past.source);
    offend(&mut engine, v4(3), Offence::RateLimited, 2, 0);
    engine.set_policy(&Bans {
        max_failures: 3,
        ban_time: secs(2 * HOUR),
        max_ban_time: secs(10 * HOUR),
        ..policy()
    });
    assert_eq!(engine.active().collect::<Vec<_>>(), [&active]);
    // The window is kept and the new threshold applies to it.
    let ban = engine.record(v4(3), Offence::RateLimited, at(3)).unwrap();
    assert_eq!(ban.duration, secs(2 * HOUR));
    // The history too: 1 h doubled is below the new ban_time.
    assert_eq!(ban_now(&mut engine, v4(2), 10).duration, secs(2 * HOUR));
    engine.set_policy(&Bans {
        enabled: false,
        ..policy()
    });
    assert!(engine.is_banned(&active.source, at(10)));
    assert_eq!(engine.record(v4(4), Offence::Scanner, at(10)), None);
}

#[test]
fn unanswered_challenges_ban_beyond_max_challenges() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    for i in 0..10 {
        assert_eq!(
            engine.record_challenge(source, at(i)),
            None,
            "challenge {i}"
        );
    }
    let ban = engine
        .record_challenge(source, at(10))
        .expect("the 11th bans");
    assert_eq!(ban.reason, BanReason::Challenges);
    assert_eq!(ban.offences, 11);
    assert_eq!(ban.duration, secs(HOUR));
    // Challenges of a banned source are not counted again.
    assert_eq!(engine.record_challenge(source, at(11)), None);
}

#[test]
fn a_success_clears_the_window() {
    let mut engine = BanEngine::new(&policy());
    let phone = v4(1);
    // A phone re-registering all day: one challenge, then a success, each time.
    for cycle in 0..100 {
        assert_eq!(engine.record_challenge(phone, at(cycle * 30)), None);
        assert!(engine.record_success(&phone));
    }
    // The success also clears offences and rejected names.
    assert_eq!(offend(&mut engine, phone, Offence::RateLimited, 3, 0), []);
    assert_eq!(engine.record_rejection(phone, Some("1001"), at(5)), None);
    assert!(engine.record_success(&phone));
    assert!(!engine.record_success(&phone), "nothing left to clear");
    assert_eq!(offend(&mut engine, phone, Offence::RateLimited, 4, 10), []);
}

#[test]
fn challenges_leave_the_window_after_find_time() {
    let mut engine = BanEngine::new(&policy());
    let source = v4(1);
    // Ten challenges ten minutes apart never make eleven within find_time.
    for i in 0..30 {
        assert_eq!(engine.record_challenge(source, at(i * 10 * MINUTE)), None);
    }
    // Eleven within it do.
    let start = 400 * MINUTE;
    let bans: Vec<Ban> = (0..11)
        .filter_map(|i| engine.record_challenge(source, at(start + i)))
        .collect();
    assert_eq!(bans.len(), 1);
}

#[test]
fn rejections_count_as_offences_and_distinct_users_as_enumeration() {
    let mut engine = BanEngine::new(&policy());
    // The same user refused five times: max_failures rejections.
    let source = v4(1);
    for i in 0..4 {
        assert_eq!(engine.record_rejection(source, Some("1001"), at(i)), None);
    }
    let ban = engine
        .record_rejection(source, Some("1001"), at(4))
        .unwrap();
    assert_eq!(ban.reason, BanReason::Offence(Offence::Rejection));

    // Four distinct users (more than max_users = 3), slowly, weight 0 so only names count.
    let mut engine = BanEngine::new(&Bans {
        weights: OffenceWeights {
            rejection: 0,
            ..OffenceWeights::default()
        },
        ..policy()
    });
    let enumerator = v4(2);
    for (i, user) in ["100", "101", "102"].iter().enumerate() {
        let when = at(i as u64 * 2 * MINUTE);
        assert_eq!(engine.record_rejection(enumerator, Some(user), when), None);
        // A name seen again is not a new one.
        assert_eq!(engine.record_rejection(enumerator, Some(user), when), None);
    }
    let ban = engine
        .record_rejection(enumerator, Some("103"), at(6 * MINUTE))
        .expect("a fourth name bans");
    assert_eq!(ban.reason, BanReason::Enumeration);
    assert_eq!(ban.offences, 4);
    // Names older than find_time are forgotten.
    let slow = v4(3);
    for i in 0..20 {
        let user = format!("{}", 200 + i);
        assert_eq!(
            engine.record_rejection(slow, Some(&user), at(i * 4 * MINUTE)),
            None,
            "user {user}"
        );
    }
    // Without a name, only the offence counts.
    assert_eq!(engine.record_rejection(v4(4), None, at(0)), None);
}

#[test]
fn rejected_names_are_bounded_per_source() {
    let mut engine = BanEngine::new(&Bans {
        max_users: 100,
        weights: OffenceWeights {
            rejection: 0,
            ..OffenceWeights::default()
        },
        ..policy()
    });
    for i in 0..100 {
        let user = format!("u{i}");
        assert_eq!(engine.record_rejection(v4(1), Some(&user), at(0)), None);
    }
    assert_eq!(engine.offences, 100);
    assert!(
        engine
            .record_rejection(v4(1), Some("last"), at(1))
            .is_some()
    );
    assert_eq!(engine.offences, 0, "the ban used the evidence up");
}
