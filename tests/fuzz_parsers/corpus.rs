//! The seeds of `tests/fuzz/corpus/<target>/` and the mutations applied to them: byte
//! flips, truncations, splices with another seed, insertions, removals and values at the
//! edges of length fields and separators.

use std::path::PathBuf;

use proptest::prelude::*;

/// The fuzz targets, each a folder of seeds.
pub const TARGETS: [&str; 5] = ["http_head", "ws_frame", "packet", "polling", "event_args"];

/// The seeds of `target`, sorted by file name, with their names.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fuzz/corpus", target]
        .iter()
        .collect();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {} cannot be read: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("seed {} cannot be read: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Byte strings worth writing over or into an input: the edges of the WebSocket 7-, 16- and
/// 64-bit lengths (with and without the mask bit), of `maxPayload`, of `u64` ack ids and
/// `Content-Length`, the separators of each format, and UTF-8 that is cut or not UTF-8 at all.
const EDGES: &[&[u8]] = &[
    &[125],
    &[126],
    &[127],
    &[0xfd],
    &[0xfe],
    &[0xff],
    &[0x00],
    &[0x80],
    &[0xfe, 0x00, 0x7e],
    &[0xfe, 0xff, 0xff],
    &[0xff, 0, 0, 0, 0, 0, 1, 0, 0],
    &[0xff, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x40],
    &[0xff, 0, 0, 0, 0, 0, 0x0f, 0x42, 0x41],
    &[0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b": ",
    b"\x1e",
    b"\x1e\x1e",
    b",",
    b"/",
    b"?",
    b"%",
    b"%2",
    b"+",
    b"-",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\\u0000",
    b"\\ud800",
    b"0",
    b"-1",
    b"999999",
    b"1000000",
    b"1000001",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1e400",
    b"\xc3",
    b"\xf0\x9f\x98\x80",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
];

/// One change to an input; positions are taken modulo its length.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip one bit.
    Flip(usize, u8),
    /// Keep only the first bytes.
    Truncate(usize),
    /// Drop a run of bytes.
    Remove(usize, usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Write an edge value over the bytes at a position.
    Overwrite(usize, usize),
    /// Insert an edge value.
    InsertEdge(usize, usize),
    /// Replace the tail from a position with the tail of another seed from its position.
    Splice(usize, usize, usize),
    /// Repeat a run of bytes.
    Duplicate(usize, usize),
}

/// Any one mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(a, b)| Mutation::Flip(a, b)),
        at.prop_map(Mutation::Truncate),
        (at, 1usize..16).prop_map(|(a, n)| Mutation::Remove(a, n)),
        (at, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (at, 0..EDGES.len()).prop_map(|(a, e)| Mutation::Overwrite(a, e)),
        (at, 0..EDGES.len()).prop_map(|(a, e)| Mutation::InsertEdge(a, e)),
        (at, any::<usize>(), any::<usize>()).prop_map(|(a, s, f)| Mutation::Splice(a, s, f)),
        (at, 1usize..64).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
    ]
}

/// `seed` with `mutations` applied in order; `others` are the seeds a splice takes from.
pub fn mutate(seed: &[u8], mutations: &[Mutation], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for m in mutations {
        let pos = |a: usize, len: usize| if len == 0 { 0 } else { a % (len + 1) };
        let len = out.len();
        match m {
            Mutation::Flip(a, bit) if len > 0 => out[a % len] ^= 1 << bit,
            Mutation::Flip(..) => {}
            Mutation::Truncate(a) => out.truncate(pos(*a, len)),
            Mutation::Remove(a, n) => {
                let start = pos(*a, len);
                out.drain(start..(start + n).min(len));
            }
            Mutation::Insert(a, bytes) => {
                let at = pos(*a, len);
                out.splice(at..at, bytes.iter().copied());
            }
            Mutation::Overwrite(a, e) => {
                let at = pos(*a, len);
                let edge = EDGES[*e];
                let end = (at + edge.len()).min(len);
                out.splice(at..end, edge.iter().copied());
            }
            Mutation::InsertEdge(a, e) => {
                let at = pos(*a, len);
                out.splice(at..at, EDGES[*e].iter().copied());
            }
            Mutation::Splice(a, s, f) => {
                let other = &others[s % others.len()].1;
                out.truncate(pos(*a, len));
                out.extend_from_slice(&other[pos(*f, other.len())..]);
            }
            Mutation::Duplicate(a, n) => {
                let start = pos(*a, len);
                let run = out[start..(start + n).min(len)].to_vec();
                out.splice(start..start, run);
            }
        }
    }
    out
}

/// A seed of `target` (by index) with up to seven mutations.
pub fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (0..seeds.len(), prop::collection::vec(mutation(), 1..8))
        .prop_map(move |(i, mutations)| mutate(&seeds[i].1, &mutations, &seeds))
}
