//! The client worker's reaction to each Engine.IO packet it receives: the handshake's steps,
//! pings, acks of its sends, and the events it records (deliveries, typing, errors).

use std::time::Instant;

use super::*;

/// Acts on one Engine.IO packet.
pub(super) fn packet(ctx: &mut Ctx, c: &mut Conn, p: &[u8], now: Instant) -> Result<(), String> {
    match classify(p) {
        Inbound::Open if c.state == State::Open => {
            let key = ctx.rng.mask_key();
            ws::encode_client(
                ws::OP_TEXT,
                ctx.plans[c.plan].connect_packet.as_bytes(),
                key,
                &mut c.out,
            );
            c.state = State::Auth;
        }
        Inbound::Ping => {
            ctx.res.pings += 1;
            let key = ctx.rng.mask_key();
            ws::encode_client(ws::OP_TEXT, b"3", key, &mut c.out);
        }
        Inbound::Connected if c.state == State::Auth => {
            c.state = State::Ready;
            ctx.inflight -= 1;
            ctx.res.established += 1;
            ctx.shared.established.fetch_add(1, Relaxed);
            let us = now.duration_since(c.started).as_micros() as u64;
            ctx.res.connect_hist.saturating_record(us.max(1));
            if ctx.cfg.mode == Mode::Cycle && ctx.shared.phase.load(Relaxed) == PH_PUBLISH {
                ctx.res.cycles += 1;
                ctx.shared.cycles.fetch_add(1, Relaxed);
                ctx.res.cycle_hist.saturating_record(us.max(1));
            }
        }
        Inbound::ConnectError(data) => {
            return Err(format!(
                "CONNECT refused: {}",
                String::from_utf8_lossy(data)
            ));
        }
        Inbound::Disconnect => return Err("server sent Socket.IO DISCONNECT".into()),
        Inbound::Close => return Err("server sent Engine.IO close".into()),
        Inbound::Ack {
            id,
            success,
            sequence,
        } => {
            if id >= soak::HISTORY_ID {
                soak::history_reply(ctx, id, success, now);
                return Ok(());
            }
            if let Some(i) = c.pending.iter().position(|&(a, _)| a == id) {
                let Some((_, sent)) = c.pending.remove(i) else {
                    return Ok(());
                };
                let us = (ctx.shared.nanos(now).saturating_sub(sent) / 1000).max(1);
                ctx.res.ack_hist.saturating_record(us);
                soak::ack(ctx, us, success);
                if success {
                    ctx.res.acked_ok += 1;
                    if let Some(s) = sequence {
                        let g = ctx.plans[c.plan].group as usize;
                        if ctx.res.acked.len() <= g {
                            ctx.res.acked.resize(g + 1, SeqSet::default());
                        }
                        ctx.res.acked[g].insert(s);
                        if let Some(m) = c.member.as_mut() {
                            m.own_acked.insert(s);
                        }
                    }
                } else {
                    ctx.res.acked_err += 1;
                    let why = String::from_utf8_lossy(p)
                        .chars()
                        .take(200)
                        .collect::<String>();
                    *ctx.res
                        .reasons
                        .entry(format!("send refused: {why}"))
                        .or_default() += 1;
                }
            }
        }
        Inbound::MessageNew {
            sequence,
            sent_nanos,
            channel_id,
        } => {
            let at = delivered(ctx, now);
            if let (Some(m), Some(s)) = (c.member.as_mut(), sequence) {
                let own = ctx.cfg.channels.get(m.group as usize).map(String::as_bytes);
                match (channel_id, own) {
                    (Some(got), Some(own)) if got != own => m.foreign += 1,
                    _ => m.receive(s),
                }
            }
            if let Some(t) = sent_nanos {
                record_delivery(ctx, c, (at.saturating_sub(t) / 1000).max(1));
            }
        }
        Inbound::TypingUpdate {
            publisher,
            is_typing,
        } => {
            let at = delivered(ctx, now);
            let (Some(m), Some(k)) = (c.member.as_mut(), publisher) else {
                return Ok(());
            };
            let k = k as usize;
            let Some(seen) = m.typing_seen.get_mut(k) else {
                return Ok(());
            };
            let n = *seen as u64;
            *seen += 1;
            // Publishers alternate start, stop, start...: the n-th update must say n is even.
            if is_typing != (n & 1 == 0) {
                m.typing_disorder += 1;
            }
            let sent = ctx.shared.typing_sent[k].load(Acquire);
            if n < sent && sent - n <= TYPING_RING as u64 {
                let stamp = ctx.shared.typing_stamps[k * TYPING_RING + (n as usize % TYPING_RING)]
                    .load(Relaxed);
                record_delivery(ctx, c, (at.saturating_sub(stamp) / 1000).max(1));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Counts one delivery received `now`; returns that moment on the run's clock (ns).
fn delivered(ctx: &mut Ctx, now: Instant) -> u64 {
    ctx.res.deliveries += 1;
    let at = ctx.shared.nanos(now);
    ctx.res.last_delivery_nanos = at;
    at
}

/// Records one receipt's latency (µs), and in a cluster run whose publishers are all on the
/// first node also by the receiver's node (with publishers spread, no node is theirs).
pub(super) fn record_delivery(ctx: &mut Ctx, c: &Conn, micros: u64) {
    ctx.res.delivery_hist.saturating_record(micros);
    if let Some((l, _)) = ctx.live.as_mut() {
        l.delivery.saturating_record(micros);
    }
    if ctx.cfg.nodes.len() > 1 && !ctx.cfg.spread_publishers {
        let hist = if ctx.cfg.node_of(&ctx.plans[c.plan]).2 == 0 {
            &mut ctx.res.delivery_local_hist
        } else {
            &mut ctx.res.delivery_remote_hist
        };
        hist.saturating_record(micros);
    }
}
