//! What an honest `soak` client does besides sending messages (typing, history reads) and how
//! it hands its interval figures to the main thread. A child of `client`, so it works on the
//! worker's own connection and context.

use std::time::Instant;

use super::{Conn, Ctx, LIVE_PUSH};
use crate::ws;

/// Ack ids at or above this are history reads; the rest of the id is the request's stamp in
/// microseconds since the loadgen started (39 bits: six days), so the reply carries its own
/// latency.
pub const HISTORY_ID: u64 = 1 << 40;
const STAMP_MASK: u64 = (1 << 39) - 1;

/// Before send number `ctx.res.sent`: `typing:start` and a history read when they are due.
pub fn before_send(ctx: &mut Ctx, c: &mut Conn, now: Instant) {
    let Some(mix) = ctx.cfg.soak else {
        return;
    };
    let n = ctx.res.sent;
    let channel = ctx.cfg.channels[ctx.plans[c.plan].group as usize].as_str();
    if mix.typing_every > 0 && n.is_multiple_of(mix.typing_every) {
        let text = format!(
            "42[\"typing:start\",{{\"targetId\":\"{channel}\",\"targetType\":\"channel\"}}]"
        );
        let key = ctx.rng.mask_key();
        ws::encode_client(ws::OP_TEXT, text.as_bytes(), key, &mut c.out);
    }
    if mix.history_every > 0 && n.is_multiple_of(mix.history_every) {
        let id = history_id(ctx.shared.nanos(now) / 1000);
        let text = format!(
            "42{id}[\"message:history\",{{\"targetId\":\"{channel}\",\"targetType\":\"channel\",\"limit\":{}}}]",
            mix.history_limit
        );
        let key = ctx.rng.mask_key();
        ws::encode_client(ws::OP_TEXT, text.as_bytes(), key, &mut c.out);
    }
}

/// The ack id of a history read sent `micros` after the loadgen started.
pub fn history_id(micros: u64) -> u64 {
    HISTORY_ID | (micros & STAMP_MASK)
}

/// Microseconds from a history read's id to `now_micros`.
pub fn history_latency(id: u64, now_micros: u64) -> u64 {
    (now_micros.wrapping_sub(id) & STAMP_MASK).max(1)
}

/// A history reply.
pub fn history_reply(ctx: &mut Ctx, id: u64, success: bool, now: Instant) {
    let now_us = ctx.shared.nanos(now) / 1000;
    let Some((l, _)) = ctx.live.as_mut() else {
        return;
    };
    if success {
        l.history.saturating_record(history_latency(id, now_us));
    } else {
        l.history_err += 1;
    }
}

/// A `message:send` ack after `us` microseconds.
pub fn ack(ctx: &mut Ctx, us: u64, success: bool) {
    if let Some((l, _)) = ctx.live.as_mut() {
        l.ack.saturating_record(us);
        if success {
            l.acked_ok += 1;
        } else {
            l.acked_err += 1;
        }
    }
}

/// Hands the figures gathered since the last push to the main thread, every [`LIVE_PUSH`].
pub fn push(ctx: &mut Ctx, now: Instant) {
    let Some((l, last)) = ctx.live.as_mut() else {
        return;
    };
    if now.duration_since(*last) < LIVE_PUSH {
        return;
    }
    *last = now;
    if let Ok(mut shared) = ctx.shared.live.lock() {
        shared.absorb(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ids_carry_their_stamp_and_stay_apart_from_send_ids() {
        let id = history_id(1_234_567);
        assert!(id >= HISTORY_ID);
        assert_eq!(history_latency(id, 1_234_567 + 850), 850);
        assert_eq!(history_latency(id, 1_234_567), 1, "at least 1 µs");
        // Six days in, the stamp wraps; a reply across the wrap still measures its latency.
        let late = history_id(STAMP_MASK - 10);
        assert_eq!(history_latency(late, STAMP_MASK + 30), 40);
    }
}
