//! AFL++ target: the properties of `tests/fuzz_parsers/` (`fuzz_packet`) on each input.

#[path = "../../tests/fuzz_parsers/checks.rs"]
mod checks;
#[path = "../../tests/fuzz_parsers/checks_packets.rs"]
mod checks_packets;

fn main() {
    afl::fuzz!(|data: &[u8]| checks_packets::fuzz_packet(data));
}
