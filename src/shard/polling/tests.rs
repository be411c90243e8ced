use super::*;
use crate::ids::ShardId;

#[test]
fn a_new_sid_routes_back_to_its_shard() {
    for shard in [0u16, 1, 9, 10, 255] {
        let sid = new_sid(ShardId(shard));
        assert_eq!(polling::sid_shard(&sid, 256), Some(shard), "{sid}");
    }
    assert_eq!(polling::sid_shard(&new_sid(ShardId(3)), 2), None);
}

#[test]
fn poll_slots_do_not_clash_with_connection_slots() {
    assert!(!is_poll(0));
    assert!(!is_poll(u32::MAX >> 1));
    let slot = 7 | POLL_BIT;
    assert!(is_poll(slot));
    assert_eq!(index(slot), 7);
}
