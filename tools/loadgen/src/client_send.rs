//! What a publishing connection sends: `message:send` stamped with its send time, and
//! alternating `typing:start` / `typing:stop`. A child of `client`, so it writes into the
//! worker's own connection and context.

use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::Instant;

use super::{Conn, Ctx, TYPING_RING};
use crate::ws;

/// Sends this publisher's next typing event: `typing:start` for its even sends, `typing:stop`
/// for odd ones, so that every send changes the typing state and yields a `typing:update`.
pub fn send_typing(ctx: &mut Ctx, c: &mut Conn, now: Instant) {
    let t = ctx.shared.nanos(now);
    ctx.res.first_send_nanos.get_or_insert(t);
    let k = c.plan;
    let Some(counter) = ctx.shared.typing_sent.get(k) else {
        return;
    };
    let n = counter.load(Relaxed);
    let name = if n & 1 == 0 { "start" } else { "stop" };
    let channel = ctx.cfg.channels[ctx.plans[c.plan].group as usize].as_str();
    let text =
        format!("42[\"typing:{name}\",{{\"targetId\":\"{channel}\",\"targetType\":\"channel\"}}]");
    // The stamp is published before the count (Release) and before the frame leaves, so a
    // receiver that sees the update and loads the count (Acquire) finds the stamp.
    ctx.shared.typing_stamps[k * TYPING_RING + (n as usize % TYPING_RING)].store(t, Relaxed);
    counter.fetch_add(1, Release);
    let key = ctx.rng.mask_key();
    ws::encode_client(ws::OP_TEXT, text.as_bytes(), key, &mut c.out);
    ctx.res.sent += 1;
}

/// Sends this connection's next `message:send`, its content stamped with the send time
/// (`t=<nanos>;`) and its ack awaited in `c.pending`.
pub fn send_message(ctx: &mut Ctx, c: &mut Conn, now: Instant) {
    let t = ctx.shared.nanos(now);
    ctx.res.first_send_nanos.get_or_insert(t);
    let id = c.next_ack;
    c.next_ack += 1;
    let mut text = format!(
        "42{id}[\"message:send\",{{\"targetId\":\"{}\",\"targetType\":\"channel\",\"content\":\"t={t};p={};",
        ctx.cfg.channels[ctx.plans[c.plan].group as usize], c.plan
    );
    text.push_str(&"x".repeat(ctx.cfg.content_pad));
    text.push_str(&format!(
        "\",\"clientMsgId\":\"lg{}-{}-{id}\"}}]",
        ctx.cfg.id, c.plan
    ));
    let key = ctx.rng.mask_key();
    ws::encode_client(ws::OP_TEXT, text.as_bytes(), key, &mut c.out);
    c.pending.push_back((id, t));
    ctx.res.sent += 1;
}
