use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use super::*;
use crate::{
    bans::{BanEngine, BanReason, Offence},
    config::Bans,
    learned::Learned,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// 2025-06-15T15:06:40Z.
fn fixed() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn entry(kind: ListKind, target: &str, expires: Option<SystemTime>) -> ListEntry {
    ListEntry {
        kind,
        target: serde_json::from_value(serde_json::json!(target)).unwrap(),
        comment: None,
        expires,
        added: fixed(),
    }
}

/// A state with every kind of value, its expiries in the future.
fn sample() -> State {
    let now = SystemTime::now();
    let mut engine = BanEngine::new(&Bans::default());
    engine
        .record("203.0.113.9/32".parse().unwrap(), Offence::Scanner, now)
        .unwrap();
    engine.ban(
        "2001:db8:bad::/64".parse().unwrap(),
        DAY,
        BanReason::Manual,
        now,
    );
    let lifted = "203.0.113.10/32".parse().unwrap();
    engine.record(lifted, Offence::TollFraud, now).unwrap();
    engine.unban(&lifted);
    State {
        entries: vec![
            ListEntry {
                comment: Some("office, until the move".to_owned()),
                ..entry(ListKind::Allow, "198.51.100.0/24", Some(now + DAY))
            },
            entry(ListKind::Allow, "pbx.example.com", None),
            entry(ListKind::Deny, "2001:db8::/32", None),
            entry(ListKind::Deny, "192.0.2.66/32", Some(now + 365 * DAY)),
        ],
        bans: engine.snapshot(),
        learned: vec![Learned {
            address: "198.51.100.20".parse().unwrap(),
            user: Some("1001".to_owned()),
            since: now,
            until: now + DAY,
        }],
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = sample();
    save(&path, &state).unwrap();
    assert_eq!(load(&path).unwrap(), Some(state.clone()));
    // Saving again replaces the file.
    let smaller = State {
        entries: state.entries[..1].to_vec(),
        ..State::default()
    };
    save(&path, &smaller).unwrap();
    assert_eq!(load(&path).unwrap(), Some(smaller));
    assert_eq!(listing(dir.path()), ["state.json"]);
}

#[test]
fn file_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = State {
        entries: vec![ListEntry {
            comment: Some("noisy".to_owned()),
            // Far enough ahead to survive load's expiry check for a long while.
            expires: Some(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            ..entry(ListKind::Deny, "192.0.2.66/32", None)
        }],
        bans: BanEngineState::default(),
        learned: Vec::new(),
    };
    save(&path, &state).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "version": 1,
            "entries": [{
                "kind": "deny",
                "target": "192.0.2.66/32",
                "comment": "noisy",
                "expires": "2100-01-01T00:00:00Z",
                "added": "2025-06-15T15:06:40Z",
            }],
            "bans": {"active": [], "history": []},
            "learned": [],
        })
    );
    assert!(text.ends_with("}\n"), "{text}");

    // Optional keys may be left out, and times may carry any offset.
    fs::write(
        &path,
        r#"{"version": 1, "bans": {"active": [], "history": []}, "entries": [
            {"kind": "allow", "target": "pbx.example.com", "added": "2025-06-15T17:06:40+02:00"}
        ]}"#,
    )
    .unwrap();
    let state = load(&path).unwrap().unwrap();
    assert_eq!(
        state.entries,
        [entry(ListKind::Allow, "pbx.example.com", None)]
    );
    assert_eq!(
        state.entries[0].target,
        Target::Host("pbx.example.com".to_owned())
    );
}

#[test]
fn missing_file_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load(&dir.path().join("state.json")).unwrap(), None);
    assert_eq!(
        load(&dir.path().join("no/such/dir/state.json")).unwrap(),
        None
    );
}

#[test]
fn creates_private_directory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lib/sipfilter/state.json");
    save(&path, &sample()).unwrap();
    assert_eq!(mode(&dir.path().join("lib/sipfilter")), 0o700);
    assert_eq!(mode(&path), 0o600);
    // An existing file's looser mode is not inherited by its replacement.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    save(&path, &State::default()).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(listing(&dir.path().join("lib/sipfilter")), ["state.json"]);

    // A relative path with no directory part is in the current directory.
    assert_eq!(directory(Path::new("state.json")), Path::new("."));
    assert_eq!(
        temp_path(Path::new("/var/lib/sipfilter/state.json")).unwrap(),
        Path::new("/var/lib/sipfilter/.state.json.tmp")
    );
}

#[test]
fn expired_entries_are_dropped_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let now = SystemTime::now();
    let keep = entry(ListKind::Deny, "192.0.2.1/32", Some(now + DAY));
    let forever = entry(ListKind::Allow, "192.0.2.3/32", None);
    let state = State {
        entries: vec![
            entry(
                ListKind::Deny,
                "192.0.2.0/32",
                Some(now - Duration::from_secs(1)),
            ),
            keep.clone(),
            entry(ListKind::Allow, "192.0.2.2/32", Some(fixed())),
            forever.clone(),
        ],
        bans: BanEngineState::default(),
        learned: Vec::new(),
    };
    save(&path, &state).unwrap();
    assert_eq!(load(&path).unwrap().unwrap().entries, [keep, forever]);

    let now = SystemTime::now();
    let trusted = Learned {
        address: "198.51.100.21".parse().unwrap(),
        user: None,
        since: now,
        until: now + DAY,
    };
    let state = State {
        learned: vec![
            Learned {
                until: now - Duration::from_secs(1),
                ..trusted.clone()
            },
            trusted.clone(),
        ],
        ..State::default()
    };
    save(&path, &state).unwrap();
    assert_eq!(load(&path).unwrap().unwrap().learned, [trusted]);
}

#[test]
fn corrupt_file_is_moved_aside() {
    let valid = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &sample()).unwrap();
        fs::read_to_string(&path).unwrap()
    };
    let cases = [
        ("not JSON", "this is not JSON".to_owned(), "not valid JSON"),
        (
            "truncated",
            valid[..valid.len() / 2].to_owned(),
            "not valid JSON",
        ),
        ("empty", String::new(), "not valid JSON"),
        ("not an object", "42".to_owned(), "not a state file"),
        (
            "future version",
            valid.replacen("\"version\": 1", "\"version\": 2", 1),
            "unknown version 2",
        ),
        (
            "no version",
            r#"{"entries": [], "bans": {"active": [], "history": []}}"#.to_owned(),
            "no \"version\"",
        ),
        (
            "bad time",
            valid.replacen("\"added\": \"", "\"added\": \"yesterday ", 1),
            "is not an RFC 3339 time",
        ),
        (
            "bad target",
            valid.replacen("198.51.100.0/24", "198.51.100.1/24", 1),
            "host bits",
        ),
        (
            "bad reason",
            valid.replacen("\"reason\": \"manual\"", "\"reason\": \"mystery\"", 1),
            "unknown variant `mystery`",
        ),
        (
            "unknown key",
            valid.replacen("\"version\": 1", "\"version\": 1, \"extra\": true", 1),
            "unknown field `extra`",
        ),
    ];
    let not_utf8 = (
        "not UTF-8",
        b"{\"version\": 1, \"entries\": [\xff]}".to_vec(),
        "not valid JSON",
    );
    let cases = cases
        .map(|(what, text, reason)| (what, text.into_bytes(), reason))
        .into_iter()
        .chain([not_utf8]);
    for (what, bytes, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, &bytes).unwrap();
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let error = load(&path).unwrap_err();
        let message = error.to_string();
        let StateError::Corrupt {
            path: reported,
            moved_to,
            reason: why,
        } = error
        else {
            panic!("{what}: not reported as corrupt: {message}");
        };
        assert_eq!(reported, path, "{what}");
        assert!(why.contains(reason), "{what}: {why}");
        assert!(message.contains("moved it aside to"), "{what}: {message}");
        // Renamed beside it with the time, content untouched; the next start finds no file.
        let name = moved_to.file_name().unwrap().to_str().unwrap();
        let seconds: u64 = name
            .strip_prefix("state.json.corrupt-")
            .unwrap_or_else(|| panic!("{what}: moved to {name}"))
            .parse()
            .unwrap();
        assert!(seconds >= before, "{what}: {name}");
        assert_eq!(moved_to.parent(), Some(dir.path()), "{what}");
        assert_eq!(fs::read(&moved_to).unwrap(), bytes, "{what}");
        assert_eq!(load(&path).unwrap(), None, "{what}");
    }
}

#[test]
fn unreadable_is_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading fails, and nothing is moved.
    let path = dir.path().join("state.json");
    fs::create_dir(&path).unwrap();
    let error = load(&path).unwrap_err();
    assert!(
        matches!(
            error,
            StateError::Io {
                action: "cannot read it",
                ..
            }
        ),
        "{error}"
    );
    assert!(path.is_dir());
}

#[test]
fn failed_save_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let old = sample();
    save(&path, &old).unwrap();
    let old_bytes = fs::read(&path).unwrap();

    // The temporary file cannot be created (something that is not a stale file holds its
    // name): the save fails before the rename.
    let temp = temp_path(&path).unwrap();
    fs::create_dir(&temp).unwrap();
    fs::write(temp.join("keep"), "x").unwrap();
    let error = save(&path, &State::default()).unwrap_err();
    assert!(matches!(error, StateError::Io { .. }), "{error}");
    assert_eq!(fs::read(&path).unwrap(), old_bytes);
    fs::remove_dir_all(&temp).unwrap();

    // A state the format cannot write (a time past year 9999) fails before the disk is
    // touched: no temporary file, old file intact.
    let unwritable = State {
        entries: vec![entry(
            ListKind::Deny,
            "192.0.2.1/32",
            Some(UNIX_EPOCH + 10_000 * 366 * DAY),
        )],
        bans: BanEngineState::default(),
        learned: Vec::new(),
    };
    let error = save(&path, &unwritable).unwrap_err();
    assert!(matches!(error, StateError::Encode { .. }), "{error}");
    assert_eq!(fs::read(&path).unwrap(), old_bytes);
    assert_eq!(listing(dir.path()), ["state.json"]);
    assert_eq!(load(&path).unwrap(), Some(old));
}

#[test]
fn crash_before_rename_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let old = sample();
    save(&path, &old).unwrap();
    // What a crash between writing and renaming leaves: a partial temporary file.
    let temp = temp_path(&path).unwrap();
    fs::write(&temp, "{\"version\": 1, \"entr").unwrap();
    assert_eq!(load(&path).unwrap(), Some(old));
    // The next save replaces it and cleans up.
    save(&path, &State::default()).unwrap();
    assert_eq!(load(&path).unwrap(), Some(State::default()));
    assert_eq!(listing(dir.path()), ["state.json"]);
}

#[test]
fn targets() {
    let target = |text: &str| serde_json::from_value::<Target>(serde_json::json!(text));
    assert_eq!(
        target("192.0.2.0/24").unwrap(),
        Target::Net("192.0.2.0/24".parse().unwrap())
    );
    assert_eq!(
        target("sbc-1.example.net").unwrap(),
        Target::Host("sbc-1.example.net".to_owned())
    );
    for bad in ["192.0.2.1/24", "300.1.1.1", "not a host", "", "192.0.2.1"] {
        assert!(target(bad).is_err(), "{bad}");
    }
    assert_eq!(
        serde_json::to_value(Target::Net("2001:db8::1/128".parse().unwrap())).unwrap(),
        serde_json::json!("2001:db8::1/128")
    );
}
