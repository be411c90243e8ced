// Waiting on events, every wait bounded by a timer whose error names what was awaited.

/**
 * Resolves with the first argument of the next `event` (all of them with `{all: true}`);
 * rejects after `timeoutMs` naming the event.
 */
export function once(emitter, event, timeoutMs = 5000, { all = false } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`no "${event}" within ${timeoutMs} ms`));
    }, timeoutMs);
    const handler = (...args) => {
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(all ? args : args[0]);
    };
    emitter.on(event, handler);
  });
}

/** `socket.emit(event, data, ack)` bounded by `timeoutMs`; resolves with the ack. */
export async function emitWithAck(socket, event, data, timeoutMs = 5000) {
  try {
    return await socket.timeout(timeoutMs).emitWithAck(event, data);
  } catch (err) {
    throw new Error(`no ack for "${event}" within ${timeoutMs} ms (${err.message})`);
  }
}

/** Races `promise` against a timer; the error names `what`. */
export async function within(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves when `check()` is true; `check` is re-run each time `poke()` is called (from an
 * event handler), so waiting is driven by events, not by a clock.
 */
export function condition(check, timeoutMs, what) {
  let poke = () => {};
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs);
    poke = () => {
      if (check()) {
        clearTimeout(timer);
        resolve();
      }
    };
  });
  poke();
  return { promise, poke };
}

/**
 * Resolves when the async `check()` holds, asking again every 100 ms (for state only a
 * request shows, such as /metrics); the error names `what`.
 */
export async function waitFor(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Collects every `event` a socket receives, first argument only, in arrival order.
 * `got.until(n | check, timeoutMs, what)` waits until `n` have arrived or `check(got)` holds,
 * re-checking on each arrival (event-driven, no polling clock).
 */
export function collect(socket, event) {
  const got = [];
  const pokes = new Set();
  socket.on(event, (data) => {
    got.push(data);
    for (const p of pokes) p();
  });
  got.until = async (want, timeoutMs = 15000, what = `"${event}" events`) => {
    const check = typeof want === "number" ? () => got.length >= want : () => want(got);
    const label = typeof want === "number" ? `${want} ${what}` : what;
    const c = condition(check, timeoutMs, `${label} (have ${got.length}: ${JSON.stringify(got).slice(0, 300)})`);
    pokes.add(c.poke);
    try {
      await c.promise;
    } finally {
      pokes.delete(c.poke);
    }
  };
  return got;
}
