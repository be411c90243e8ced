use super::*;

#[test]
fn poll_slots_do_not_clash_with_connection_slots() {
    assert!(!is_poll(0));
    assert!(!is_poll(u32::MAX >> 1));
    let slot = 7 | POLL_BIT;
    assert!(is_poll(slot));
    assert_eq!(index(slot), 7);
}
