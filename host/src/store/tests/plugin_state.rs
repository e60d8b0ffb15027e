//! Plugin state: journaled writes come back after a restart and after a crash once their
//! ticket was synced; limits; deletion; compaction; a torn tail.

use super::*;
use crate::store::plugin_state::{COMPACT_MIN_BYTES, ENTRY_OVERHEAD_BYTES, FILE_NAME};

const LIMITS: StateLimits = StateLimits {
    entries_max: 1000,
    vhost_bytes_max: 1 << 30,
};

fn store(dir: &Path) -> MessageStore {
    MessageStore::open(dir, StoreOptions::default())
        .expect("store opens")
        .0
}

fn put(state: &ExchangeState, key: &str, value: &[u8]) -> bool {
    let old = state.get(key);
    state
        .compare_and_swap(key, old.as_deref(), Some(value.to_vec()), &LIMITS)
        .expect("write accepted")
}

#[test]
fn durable_writes_survive_reopening_and_memory_ones_do_not() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = store(dir.path());
        let plugin_state = store.plugin_state();
        let x = plugin_state.attach("x", true);
        let transient = plugin_state.attach("t", false);
        take_thread_ticket();
        assert!(put(&x, "a", b"1"));
        assert!(put(&x, "b", b"2"));
        let ticket = take_thread_ticket();
        assert!(ticket > 0, "a durable write takes a ticket");
        assert!(put(&transient, "a", b"1"));
        assert_eq!(take_thread_ticket(), 0, "a transient write takes none");
        // A compare that fails changes nothing.
        assert!(
            !x.compare_and_swap("a", None, Some(b"9".to_vec()), &LIMITS)
                .unwrap()
        );
        assert!(x.compare_and_swap("b", Some(b"2"), None, &LIMITS).unwrap());
        store.close();
    }
    let store = store(dir.path());
    let plugin_state = store.plugin_state();
    let x = plugin_state.attach("x", true);
    assert_eq!(x.get("a").as_deref(), Some(&b"1"[..]));
    assert_eq!(x.get("b"), None);
    assert_eq!(x.len(), 1);
    assert_eq!(plugin_state.attach("t", true).len(), 0);
}

#[test]
fn a_synced_write_survives_a_crash() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = store(dir.path());
        let x = store.plugin_state().attach("dedup", true);
        take_thread_ticket();
        assert!(put(&x, "d:id-1", &[0, 0, 0, 0, 0, 0, 1, 0]));
        let ticket = take_thread_ticket();
        store.wait_synced_blocking(ticket).expect("synced");
        store.halt();
    }
    let store = store(dir.path());
    let x = store.plugin_state().attach("dedup", true);
    assert_eq!(
        x.get("d:id-1").as_deref(),
        Some(&[0, 0, 0, 0, 0, 0, 1, 0][..])
    );
}

#[test]
fn every_router_of_an_exchange_shares_one_state() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store(dir.path());
    let plugin_state = store.plugin_state();
    let first = plugin_state.attach("x", true);
    let second = plugin_state.attach("x", true);
    assert!(put(&first, "k", b"v"));
    assert_eq!(second.get("k").as_deref(), Some(&b"v"[..]));
    drop(first);
    drop(second);
    // Not empty: kept for the exchange's next router.
    assert_eq!(plugin_state.attach("x", true).len(), 1);
}

#[test]
fn limits_refuse_growth_but_never_a_delete() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store(dir.path());
    let plugin_state = store.plugin_state();
    let (x, y) = (
        plugin_state.attach("x", true),
        plugin_state.attach("y", true),
    );
    let limits = StateLimits {
        entries_max: 2,
        vhost_bytes_max: 3 * (1 + 4 + ENTRY_OVERHEAD_BYTES),
    };
    let cas = |s: &ExchangeState, k: &str, new: Option<&[u8]>| {
        let old = s.get(k);
        s.compare_and_swap(k, old.as_deref(), new.map(<[u8]>::to_vec), &limits)
    };
    assert_eq!(cas(&x, "a", Some(b"1234")), Ok(true));
    assert_eq!(cas(&x, "b", Some(b"1234")), Ok(true));
    assert_eq!(cas(&x, "c", Some(b"1")), Err(StateRefused::ExchangeFull(2)));
    // Replacing an entry is not a new entry.
    assert_eq!(cas(&x, "a", Some(b"4321")), Ok(true));
    assert_eq!(cas(&y, "a", Some(b"1234")), Ok(true));
    assert_eq!(
        cas(&y, "b", Some(b"1")),
        Err(StateRefused::VhostFull(limits.vhost_bytes_max))
    );
    // Growing an entry past the vhost's bytes is refused too; shrinking is not.
    assert_eq!(
        cas(&y, "a", Some(b"12345")),
        Err(StateRefused::VhostFull(limits.vhost_bytes_max))
    );
    assert_eq!(cas(&y, "a", Some(b"1")), Ok(true));
    assert_eq!(cas(&x, "a", None), Ok(true));
    assert_eq!(cas(&y, "b", Some(b"123")), Ok(true));
    assert_eq!(
        plugin_state.bytes(),
        (1 + 4 + 32) + (1 + 1 + 32) + (1 + 3 + 32)
    );
    drop((x, y));
    // Reopened, the recovered state counts against the vhost at once.
    store.close();
    drop(store);
    let store = self::store(dir.path());
    assert_eq!(
        store.plugin_state().bytes(),
        (1 + 4 + 32) + (1 + 1 + 32) + (1 + 3 + 32)
    );
}

#[test]
fn a_deleted_exchange_takes_its_state_along() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = store(dir.path());
        let plugin_state = store.plugin_state();
        let x = plugin_state.attach("x", true);
        let y = plugin_state.attach("y", true);
        let z = plugin_state.attach("z", true);
        assert!(put(&x, "k", b"v"));
        assert!(put(&y, "k", b"v"));
        assert!(put(&z, "k", b"v"));
        plugin_state.drop_exchange("x");
        assert!(x.is_empty());
        assert!(matches!(
            x.compare_and_swap("k", None, Some(b"v".to_vec()), &LIMITS),
            Err(StateRefused::Unavailable(_))
        ));
        // Declared again: a fresh state.
        assert!(plugin_state.attach("x", true).is_empty());
        store.close();
    }
    let store = store(dir.path());
    let plugin_state = store.plugin_state();
    assert!(plugin_state.attach("x", true).is_empty());
    // What the definitions log no longer declares goes at restore.
    plugin_state.retain(|name| name != "y");
    assert!(plugin_state.attach("y", true).is_empty());
    assert_eq!(plugin_state.attach("z", true).len(), 1);
}

#[test]
fn the_journal_is_compacted_and_keeps_the_latest_values() {
    let dir = tempfile::tempdir().expect("dir");
    let value = vec![7u8; 1000];
    let rounds = (3 * COMPACT_MIN_BYTES / 1000) as usize;
    {
        let store = store(dir.path());
        let x = store.plugin_state().attach("x", true);
        for i in 0..rounds {
            let mut v = value.clone();
            v[0] = (i % 251) as u8;
            assert!(put(&x, &format!("k{}", i % 10), &v));
            if i % 500 == 0 {
                store.flush().expect("flush");
            }
        }
        store.flush().expect("flush");
        store.close();
    }
    let len = fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
    assert!(
        len < 2 * COMPACT_MIN_BYTES,
        "{} bytes written over 10 keys, the log holds {len}",
        rounds * 1000
    );
    let store = store(dir.path());
    let x = store.plugin_state().attach("x", true);
    assert_eq!(x.len(), 10);
    for i in rounds - 10..rounds {
        let got = x.get(&format!("k{}", i % 10)).expect("kept");
        assert_eq!(got[0], (i % 251) as u8);
    }
}

#[test]
fn a_torn_tail_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = store(dir.path());
        let x = store.plugin_state().attach("x", true);
        assert!(put(&x, "a", b"1"));
        assert!(put(&x, "b", b"2"));
        store.close();
    }
    let path = dir.path().join(FILE_NAME);
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs::write(&path, &bytes).unwrap();
    let store = store(dir.path());
    let x = store.plugin_state().attach("x", true);
    assert_eq!(x.get("a").as_deref(), Some(&b"1"[..]));
    assert_eq!(x.get("b"), None);
    // And the log goes on from the cut.
    assert!(put(&x, "c", b"3"));
    store.close();
    drop((x, store));
    let store = self::store(dir.path());
    assert_eq!(store.plugin_state().attach("x", true).len(), 2);
}
