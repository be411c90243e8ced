use super::*;

const ROOM: &str = "channel:a";
const GAP: Duration = Duration::from_millis(200);

fn seq() -> Sequencer<&'static str, u64> {
    Sequencer::new(SequencerConfig {
        gap_fill: GAP,
        max_held_per_room: 8,
        max_held: 100,
    })
}

/// Positions delivered, in order.
fn delivered(out: &[Output<&'static str, u64>]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver { pos, item, .. } => {
                assert_eq!(pos, item, "the item released is the one at that position");
                Some(*pos)
            }
            Output::Fill { .. } => None,
        })
        .collect()
}

fn fills(out: &[Output<&'static str, u64>]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Fill { after, .. } => Some(*after),
            Output::Deliver { .. } => None,
        })
        .collect()
}

#[test]
fn in_order_arrivals_pass_straight_through() {
    let t0 = Instant::now();
    let mut s = seq();
    assert!(s.start(ROOM, 0));
    let mut out = Vec::new();
    for p in 1..=5 {
        assert_eq!(s.arrive(&ROOM, p, p, t0, &mut out), Arrival::Released);
    }
    assert_eq!(delivered(&out), vec![1, 2, 3, 4, 5]);
    assert!(fills(&out).is_empty());
    assert_eq!(s.released(&ROOM), Some(5));
    assert_eq!(s.next_due(), None);
}

#[test]
fn an_early_arrival_waits_for_the_one_before_it() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 10);
    let mut out = Vec::new();
    // Node B's 13 and 12 overtake node A's 11.
    assert_eq!(s.arrive(&ROOM, 13, 13, t0, &mut out), Arrival::Held);
    assert_eq!(s.arrive(&ROOM, 12, 12, t0, &mut out), Arrival::Held);
    assert!(out.is_empty());
    assert_eq!(s.held(), 2);
    assert_eq!(s.next_due(), Some(t0 + GAP));
    assert_eq!(s.arrive(&ROOM, 11, 11, t0, &mut out), Arrival::Released);
    assert_eq!(delivered(&out), vec![11, 12, 13]);
    assert_eq!(s.held(), 0);
    assert_eq!(s.next_due(), None, "the gap closed before its deadline");
    assert_eq!(s.stats().holdbacks, 2);
}

#[test]
fn positions_already_released_or_held_are_dropped() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 4);
    let mut out = Vec::new();
    assert_eq!(
        s.arrive(&ROOM, 4, 4, t0, &mut out),
        Arrival::Duplicate,
        "at the floor"
    );
    s.arrive(&ROOM, 5, 5, t0, &mut out);
    assert_eq!(
        s.arrive(&ROOM, 5, 5, t0, &mut out),
        Arrival::Duplicate,
        "own echo"
    );
    s.arrive(&ROOM, 7, 7, t0, &mut out);
    assert_eq!(s.arrive(&ROOM, 7, 7, t0, &mut out), Arrival::Duplicate);
    assert_eq!(delivered(&out), vec![5]);
    assert_eq!(s.stats().duplicates, 3);
    assert_eq!(
        s.arrive(&"dm:other", 1, 1, t0, &mut out),
        Arrival::Unknown,
        "no local member, no stream"
    );
}

#[test]
fn a_gap_past_its_deadline_is_filled_and_holes_are_skipped() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 0);
    let mut out = Vec::new();
    s.arrive(&ROOM, 1, 1, t0, &mut out);
    s.arrive(&ROOM, 5, 5, t0, &mut out);
    s.tick(t0 + GAP / 2, &mut out);
    assert!(fills(&out).is_empty(), "not before the deadline");
    s.tick(t0 + GAP, &mut out);
    assert_eq!(fills(&out), vec![1]);
    out.clear();
    s.tick(t0 + GAP * 3, &mut out);
    assert!(fills(&out).is_empty(), "one fill out at a time");
    // PostgreSQL has 2 and 4; 3 is a hole (its row was skipped); the top is 5.
    s.filled(
        &ROOM,
        vec![(2, 2), (4, 4), (5, 5)],
        5,
        true,
        t0 + GAP,
        &mut out,
    );
    assert_eq!(delivered(&out), vec![2, 4, 5]);
    assert_eq!(s.stats().holes, 1);
    assert_eq!(s.held(), 0, "the held 5 was released once, from the rows");
    assert_eq!(s.released(&ROOM), Some(5));
    assert_eq!(s.next_due(), None);
}

#[test]
fn a_new_subscription_reads_the_tail_it_may_have_missed() {
    let t0 = Instant::now();
    let mut s = seq();
    // The member joined when the room's top was 7; 8 and 9 were published before the node's
    // subscription was confirmed and never arrive.
    s.start(ROOM, 7);
    let mut out = Vec::new();
    s.confirmed(&ROOM, &mut out);
    assert_eq!(fills(&out), vec![7]);
    out.clear();
    // 10 arrives live while the fill is out: held.
    assert_eq!(s.arrive(&ROOM, 10, 10, t0, &mut out), Arrival::Held);
    s.filled(&ROOM, vec![(8, 8), (9, 9)], 9, true, t0, &mut out);
    assert_eq!(delivered(&out), vec![8, 9, 10]);
    assert!(fills(&out).is_empty());
}

#[test]
fn the_hold_back_is_bounded_and_the_room_is_read_instead() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 0);
    let mut out = Vec::new();
    for p in 2..=9 {
        assert_eq!(s.arrive(&ROOM, p, p, t0, &mut out), Arrival::Held);
    }
    assert_eq!(s.arrive(&ROOM, 10, 10, t0, &mut out), Arrival::Dropped);
    assert_eq!(s.arrive(&ROOM, 11, 11, t0, &mut out), Arrival::Dropped);
    assert_eq!(s.held(), 8, "never more than the bound");
    assert_eq!(fills(&out), vec![0], "asked at once, once");
    out.clear();
    // The fill's read happened before 11 was committed: one page up to 10.
    s.filled(
        &ROOM,
        (1..=10).map(|p| (p, p)).collect(),
        10,
        true,
        t0,
        &mut out,
    );
    assert_eq!(delivered(&out), (1..=10).collect::<Vec<_>>());
    assert_eq!(fills(&out), vec![10], "11 was dropped: read again at once");
    out.clear();
    s.filled(&ROOM, vec![(11, 11)], 11, true, t0, &mut out);
    assert_eq!(delivered(&out), vec![11]);
    assert!(fills(&out).is_empty());
    assert_eq!(s.stats().dropped, 2);
}

#[test]
fn the_bound_over_all_rooms_holds_too() {
    let t0 = Instant::now();
    let mut s: Sequencer<u32, u64> = Sequencer::new(SequencerConfig {
        gap_fill: GAP,
        max_held_per_room: 8,
        max_held: 10,
    });
    let mut out = Vec::new();
    for room in 0..4 {
        s.start(room, 0);
        for p in 2..=4 {
            s.arrive(&room, p, p, t0, &mut out);
        }
    }
    assert_eq!(s.held(), 10);
    assert_eq!(s.stats().dropped, 2);
    s.stop(&0);
    assert_eq!(s.held(), 7, "a stopped room's hold-back is freed");
}

#[test]
fn a_long_gap_is_read_page_by_page() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 0);
    let mut out = Vec::new();
    s.confirmed(&ROOM, &mut out);
    out.clear();
    s.filled(&ROOM, vec![(1, 1), (2, 2)], 5, false, t0, &mut out);
    assert_eq!(delivered(&out), vec![1, 2]);
    assert_eq!(fills(&out), vec![2], "next page");
    out.clear();
    s.filled(&ROOM, vec![(3, 3), (5, 5)], 5, true, t0, &mut out);
    assert_eq!(delivered(&out), vec![3, 5]);
    assert_eq!(s.stats().holes, 1);
}

#[test]
fn a_failed_fill_is_retried_even_with_nothing_held() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 3);
    let mut out = Vec::new();
    s.confirmed(&ROOM, &mut out);
    assert_eq!(fills(&out), vec![3]);
    out.clear();
    s.fill_failed(&ROOM, t0);
    s.tick(t0 + GAP / 2, &mut out);
    assert!(out.is_empty());
    s.tick(t0 + GAP, &mut out);
    assert_eq!(
        fills(&out),
        vec![3],
        "the tail check is owed until answered"
    );
    out.clear();
    s.filled(&ROOM, vec![], 3, true, t0 + GAP, &mut out);
    assert!(out.is_empty());
    assert_eq!(s.next_due(), None);
}

#[test]
fn a_watermark_above_the_next_position_fills_at_once() {
    let t0 = Instant::now();
    let mut s = seq();
    s.start(ROOM, 0);
    let mut out = Vec::new();
    s.arrive(&ROOM, 1, 1, t0, &mut out);
    out.clear();
    s.watermark(&ROOM, 1, &mut out);
    assert!(out.is_empty(), "nothing missing");
    s.watermark(&ROOM, 3, &mut out);
    assert_eq!(fills(&out), vec![1]);
    out.clear();
    s.watermark(&ROOM, 4, &mut out);
    assert!(out.is_empty(), "coalesced with the fill that is out");
    s.filled(&ROOM, vec![(2, 2), (3, 3)], 3, true, t0, &mut out);
    assert_eq!(delivered(&out), vec![2, 3]);
    assert_eq!(fills(&out), vec![3], "the later watermark asks again");
}

#[test]
fn resync_asks_every_room_from_its_next_position() {
    let t0 = Instant::now();
    let mut s: Sequencer<u32, u64> = Sequencer::new(SequencerConfig::default());
    let mut out = Vec::new();
    s.start(1, 0);
    s.start(2, 40);
    s.arrive(&1, 1, 1, t0, &mut out);
    out.clear();
    s.resync_all(&mut out);
    let mut asked: Vec<(u32, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Fill { room, after } => Some((*room, *after)),
            _ => None,
        })
        .collect();
    asked.sort_unstable();
    assert_eq!(asked, vec![(1, 1), (2, 40)]);
}

/// A small deterministic generator (xorshift64*), so the simulation needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Two publishers write one room; Redis delivers their publications in any interleaving and
/// loses some (a node died after COMMIT, an outage); a few positions are holes; PostgreSQL
/// answers fills from the truth, a page at a time, with the top committed when it is read.
/// Whatever happens, the node releases every committed position once, in order.
#[test]
fn any_interleaving_and_loss_releases_every_committed_event_once_in_order() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let n: u64 = 40 + rng.below(80);
        let holes: Vec<bool> = (0..=n).map(|p| p > 0 && rng.below(20) == 0).collect();
        // Publications in Redis order: each committed position is published unless lost; a
        // position's publication may be late by a few places (another node published faster).
        let mut wire: Vec<u64> = (1..=n)
            .filter(|&p| !holes[p as usize] && rng.below(8) != 0)
            .collect();
        for i in 0..wire.len() {
            let j = (i + rng.below(4) as usize).min(wire.len() - 1);
            wire.swap(i, j);
        }
        let mut s: Sequencer<&str, u64> = Sequencer::new(SequencerConfig {
            gap_fill: GAP,
            max_held_per_room: 6,
            max_held: 6,
        });
        s.start(ROOM, 0);
        let t0 = Instant::now();
        let mut now = t0;
        let mut out = Vec::new();
        let mut got = Vec::new();
        let mut pending_fill: Option<u64> = None;
        // Committed top grows as publications go out: PostgreSQL is always ahead of Redis.
        let mut committed = 0u64;
        let mut wire = wire.into_iter().peekable();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 100_000, "seed {seed}: no progress");
            for o in out.drain(..) {
                match o {
                    Output::Deliver { pos, item, .. } => {
                        assert_eq!(pos, item);
                        got.push(pos);
                    }
                    Output::Fill { after, .. } => {
                        assert!(pending_fill.is_none(), "seed {seed}: two fills out");
                        pending_fill = Some(after);
                    }
                }
            }
            let done = wire.peek().is_none();
            match rng.below(6) {
                0..=2 if !done => {
                    let p = wire.next().unwrap_or_default();
                    committed = committed.max(p);
                    s.arrive(&ROOM, p, p, now, &mut out);
                }
                3 if pending_fill.is_some() => {
                    let after = pending_fill.take().unwrap_or_default();
                    if done {
                        committed = n;
                    }
                    let page: Vec<(u64, u64)> = (after + 1..=committed)
                        .filter(|&p| !holes[p as usize])
                        .take(5)
                        .map(|p| (p, p))
                        .collect();
                    let complete = page
                        .last()
                        .is_none_or(|&(last, _)| (last + 1..=committed).all(|p| holes[p as usize]));
                    if rng.below(10) == 0 {
                        s.fill_failed(&ROOM, now);
                    } else {
                        s.filled(&ROOM, page, committed, complete, now, &mut out);
                    }
                }
                _ => {
                    now += Duration::from_millis(50);
                    if done && pending_fill.is_none() {
                        // The periodic sweep: the room's counter against what was released.
                        committed = n;
                        s.watermark(&ROOM, n, &mut out);
                    }
                    s.tick(now, &mut out);
                }
            }
            if done && pending_fill.is_none() && out.is_empty() && s.released(&ROOM) == Some(n) {
                break;
            }
        }
        let want: Vec<u64> = (1..=n).filter(|&p| !holes[p as usize]).collect();
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(s.held(), 0, "seed {seed}");
    }
}
