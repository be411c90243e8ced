//! Bookkeeping for measurements: latency histograms and the per-member record of which
//! sequences arrived, from which exactly-once and in-order delivery (contract §5) is judged
//! after the run against the set of acked sequences.

use hdrhistogram::Histogram;

/// A latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant histogram bounds")
}

/// A growable set of sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Inserts `seq`; returns false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize((w + 1).next_power_of_two(), 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += fresh as u64;
        fresh
    }

    /// Whether `seq` is present.
    #[cfg(test)]
    pub fn contains(&self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        w < self.words.len() && self.words[w] & (1u64 << (seq % 64)) != 0
    }

    /// How many sequences are present.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &SeqSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.len = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }

    /// Members of `self` that are missing from `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, &w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }

    /// Iterates over the members in increasing order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }
}

/// What one member connection saw of the channel's `message:new` events.
#[derive(Debug, Clone, Default)]
pub struct MemberRecord {
    /// Every sequence received.
    pub seen: SeqSet,
    /// Highest sequence received so far.
    pub max_seq: u64,
    /// Receipts of a sequence already received.
    pub duplicates: u64,
    /// Receipts of a new sequence lower than one already received.
    pub out_of_order: u64,
    /// Sequences this connection published that were acked (the server might not echo them).
    pub own_acked: SeqSet,
    /// The channel group this member belongs to (index into the run's channels).
    pub group: u32,
    /// `message:new` events for a channel other than the member's own (non-member deliveries).
    pub foreign: u64,
    /// `typing` runs: `typing:update` events received per publisher index.
    pub typing_seen: Vec<u32>,
    /// `typing` runs: updates whose `isTyping` did not alternate as the publisher sent them.
    pub typing_disorder: u64,
    /// The connection's plan index (which user it is; publishers are the lowest indexes).
    pub plan: usize,
}

impl MemberRecord {
    /// Records the receipt of `seq`.
    pub fn receive(&mut self, seq: u64) {
        if !self.seen.insert(seq) {
            self.duplicates += 1;
        } else if seq < self.max_seq {
            self.out_of_order += 1;
        }
        self.max_seq = self.max_seq.max(seq);
    }
}

/// Delivery correctness over all members, judged against the acked sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correctness {
    /// Acked sequences a member never received (not counting the member's own messages).
    pub missing: u64,
    /// Acked sequences a publisher never received back itself.
    pub missing_own: u64,
    /// Duplicate receipts.
    pub duplicates: u64,
    /// Out-of-order receipts.
    pub out_of_order: u64,
    /// Messages received for a channel the member is not in.
    pub foreign: u64,
}

/// Judges every member against the acked sequences of its own group (`acked[m.group]`).
pub fn judge(members: &[MemberRecord], acked: &[SeqSet]) -> Correctness {
    let mut c = Correctness::default();
    let empty = SeqSet::default();
    for m in members {
        let acked = acked.get(m.group as usize).unwrap_or(&empty);
        let missing_all = acked.count_missing_from(&m.seen);
        let missing_own = m.own_acked.count_missing_from(&m.seen);
        c.missing += missing_all - missing_own;
        c.missing_own += missing_own;
        c.duplicates += m.duplicates;
        c.out_of_order += m.out_of_order;
        c.foreign += m.foreign;
    }
    c
}

/// Typing delivery correctness: what each member received from each publisher against what
/// the publisher sent (`sent[k]`), to everyone but the publisher itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypingCorrectness {
    /// Updates a member should have received and did not.
    pub missing: u64,
    /// Updates received beyond what was sent (duplicates).
    pub extra: u64,
    /// Updates echoed back to their own sender (the contract says never).
    pub echoed: u64,
    /// Updates whose `isTyping` broke the start/stop alternation (reordering).
    pub disorder: u64,
}

/// Judges typing receipts; `sent[k]` is how many start/stop events publisher `k` sent.
pub fn judge_typing(members: &[MemberRecord], sent: &[u64]) -> TypingCorrectness {
    let mut c = TypingCorrectness::default();
    for m in members {
        c.disorder += m.typing_disorder;
        for (k, &s) in sent.iter().enumerate() {
            let got = m.typing_seen.get(k).copied().unwrap_or(0) as u64;
            if k == m.plan {
                c.echoed += got;
            } else {
                c.missing += s.saturating_sub(got);
                c.extra += got.saturating_sub(s);
            }
        }
    }
    c
}

/// Merges per-group acked sets from several workers into `into`.
pub fn union_groups(into: &mut Vec<SeqSet>, from: &[SeqSet]) {
    if into.len() < from.len() {
        into.resize(from.len(), SeqSet::default());
    }
    for (a, b) in into.iter_mut().zip(from) {
        a.union_with(b);
    }
}

/// p50 / p90 / p99 / max of a histogram, in microseconds, as JSON.
pub fn percentiles_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

/// One-line human rendering of a histogram's percentiles.
pub fn percentiles_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "n={} p50={} p90={} p99={} max={}",
        h.len(),
        fmt_us(h.value_at_quantile(0.50)),
        fmt_us(h.value_at_quantile(0.90)),
        fmt_us(h.value_at_quantile(0.99)),
        fmt_us(h.max())
    )
}

fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> SeqSet {
        let mut s = SeqSet::default();
        for &x in v {
            s.insert(x);
        }
        s
    }

    #[test]
    fn seqset_inserts_counts_and_unions() {
        let mut s = set(&[1, 2, 64, 1000]);
        assert!(!s.insert(2));
        assert_eq!(s.len(), 4);
        assert!(s.contains(1000) && !s.contains(999) && !s.contains(1 << 40));
        s.union_with(&set(&[3, 2, 5000]));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 2, 3, 64, 1000, 5000]);
        assert_eq!(s.len(), 6);
        assert_eq!(set(&[1, 2, 3, 9999]).count_missing_from(&set(&[2])), 3);
    }

    #[test]
    fn member_record_tells_duplicates_from_reordering() {
        let mut m = MemberRecord::default();
        for s in [1, 2, 4, 3, 4, 5] {
            m.receive(s);
        }
        assert_eq!((m.duplicates, m.out_of_order, m.max_seq), (1, 1, 5));
    }

    #[test]
    fn judge_separates_own_echo_from_missing() {
        let acked = set(&[1, 2, 3, 4]);
        let mut a = MemberRecord::default();
        for s in [1, 2, 4] {
            a.receive(s);
        }
        a.own_acked = set(&[3]);
        let mut b = MemberRecord::default();
        b.receive(1);
        b.receive(1);
        let c = judge(&[a, b], &[acked]);
        assert_eq!(
            c,
            Correctness {
                missing: 3,
                missing_own: 1,
                duplicates: 1,
                out_of_order: 0,
                foreign: 0,
            }
        );
    }

    #[test]
    fn judge_uses_each_members_own_group_and_counts_foreign() {
        let acked = vec![set(&[1, 2]), set(&[1])];
        let mut a = MemberRecord::default();
        a.receive(1);
        a.receive(2);
        let mut b = MemberRecord {
            group: 1,
            foreign: 2,
            ..MemberRecord::default()
        };
        b.receive(1);
        let c = judge(&[a, b], &acked);
        assert_eq!((c.missing, c.foreign), (0, 2));
    }

    #[test]
    fn typing_judge_counts_missing_extra_and_echo() {
        let m0 = MemberRecord {
            plan: 0,
            typing_seen: vec![1, 3],
            ..MemberRecord::default()
        };
        let m1 = MemberRecord {
            plan: 1,
            typing_seen: vec![5, 0],
            typing_disorder: 1,
            ..MemberRecord::default()
        };
        let c = judge_typing(&[m0, m1], &[4, 2]);
        assert_eq!(
            c,
            TypingCorrectness {
                missing: 0,
                extra: 1 + 1,
                echoed: 1,
                disorder: 1
            }
        );
    }

    #[test]
    fn percentiles_render() {
        let mut h = latency_histogram();
        for v in 1..=100 {
            h.record(v * 100).unwrap();
        }
        let j = percentiles_json(&h);
        assert_eq!(j["count"], 100);
        assert!(j["p50_us"].as_u64().unwrap() >= 4_990 && j["p50_us"].as_u64().unwrap() <= 5_010);
        assert!(
            percentiles_line(&h).contains("max=10.0"),
            "{}",
            percentiles_line(&h)
        );
    }
}
