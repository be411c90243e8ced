//! An in-memory harness for shards, in the manner of quinn's `Pair`: two shards of one node
//! with their real inboxes, the store thread's loop on the memory backend run in place, and
//! clients whose bytes go through memory instead of sockets. Nothing runs on its own: the
//! test writes what a client sends, then [`Pair::drive`]s every shard and the store until
//! nothing moves, then reads what the client got. Time is virtual ([`Pair::advance`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::Receiver;
use mio::{Poll, Waker};
use serde_json::Value;

use super::{Shard, Shared, WAKER};
use crate::chat::auth::JwtVerifier;
use crate::config::{Args, Config};
use crate::ids::{ChannelId, ShardId, WorkspaceId};
use crate::mesh::{BrokerHandle, Mesh, PresenceCommand, ShardHandle, StoreCommand, StoreHandle};
use crate::metrics::Metrics;
use crate::store::{Backend, MemoryBackend, Store};
use crate::transport::memory::Pipe;
use crate::transport::Stream;

/// Shards of one node, its store, and a clock.
pub struct Pair {
    /// The shards, by id.
    pub shards: Vec<Shard>,
    store: Store<MemoryBackend>,
    store_inbox: Receiver<StoreCommand>,
    presence_inbox: Receiver<PresenceCommand>,
    clients: Vec<Client>,
    /// The virtual time.
    pub now: Instant,
    /// The data every test starts with.
    pub world: World,
}

/// Two users (Ann and Bob), members of one workspace and its channel, with their session
/// tokens.
pub struct World {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// `general`, which both are in.
    pub channel: ChannelId,
    /// Their session tokens.
    pub tokens: [String; 2],
}

/// A client's connection to one shard, through memory.
#[derive(Clone, Debug)]
pub struct Client {
    /// The shard it is connected to.
    pub shard: usize,
    key: u32,
    generation: u32,
    pipe: Pipe,
}

impl Pair {
    /// `shards` shards with connection state recovery on, the memory store with a
    /// [`World`], and the clock at an arbitrary instant.
    pub fn new(shards: usize) -> Pair {
        Pair::with_flags(shards, &[])
    }

    /// Like [`Pair::new`], with more command-line `flags` (settings).
    pub fn with_flags(shards: usize, flags: &[&str]) -> Pair {
        let n = shards.to_string();
        let mut argv = vec!["ocomms-rt", "--shards", &n, "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(flags);
        let config = Config::from_args(Args::try_parse_from(argv).expect("valid flags"))
            .expect("valid settings");
        let metrics = Arc::new(Metrics::new(shards));
        let (store_tx, store_inbox) = crossbeam_channel::unbounded();
        let (presence_tx, presence_inbox) = crossbeam_channel::unbounded();
        let mut polls = Vec::new();
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        for i in 0..shards {
            let poll = Poll::new().expect("a poll");
            let waker = Waker::new(poll.registry(), WAKER).expect("a waker");
            let (tx, rx) = crossbeam_channel::unbounded();
            handles.push(ShardHandle::new(ShardId(i as u16), tx, Arc::new(waker)));
            inboxes.push(rx);
            polls.push(poll);
        }
        let broker = BrokerHandle::local(handles.clone())
            .with_presence(presence_tx)
            .with_recovery();
        let mesh = Mesh {
            shards: handles,
            store: StoreHandle::new(store_tx),
            broker,
        };
        let mut backend = MemoryBackend::new();
        let world = World::create(&mut backend);
        let store = Store::new(backend, mesh.clone(), Arc::clone(&metrics));
        let shared = Arc::new(Shared {
            jwt: JwtVerifier::new(None),
            tls: None,
            metrics,
            store_kind: "memory",
            started: Instant::now(),
            gate: crate::gate::Gate::new(config.limits.connections),
            config,
            demo: None,
        });
        let shards = polls
            .into_iter()
            .zip(inboxes)
            .enumerate()
            .map(|(i, (poll, inbox))| {
                let id = ShardId(i as u16);
                Shard::new(id, poll, None, inbox, mesh.clone(), Arc::clone(&shared))
                    .expect("a shard")
            })
            .collect();
        Pair {
            shards,
            store,
            store_inbox,
            presence_inbox,
            clients: Vec::new(),
            now: Instant::now(),
            world,
        }
    }

    /// A new connection to shard `shard`.
    pub fn connect(&mut self, shard: usize) -> Client {
        let pipe = Pipe::default();
        let key = self.shards[shard]
            .add(Stream::Memory(pipe.clone()), self.now)
            .expect("an in-memory connection registers");
        let generation = self.shards[shard].sockets.conns[key as usize].generation;
        let client = Client {
            shard,
            key,
            generation,
            pipe,
        };
        self.clients.push(client.clone());
        client
    }

    /// Runs every shard and the store until no one has anything left to do.
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            for client in &self.clients {
                let ends = client.pipe.ends();
                let readable = !ends.input.is_empty() || ends.closed;
                drop(ends);
                let shard = &mut self.shards[client.shard];
                let conn = shard.sockets.conns.get(client.key as usize);
                if readable && conn.is_some_and(|c| c.generation == client.generation) {
                    shard.on_readable(client.key, self.now);
                    busy = true;
                }
            }
            for shard in &mut self.shards {
                busy |= !shard.inbox.is_empty() || !shard.core.dirty.is_empty();
                busy |= !shard.core.ready.is_empty();
                shard.serve_ready(self.now);
                shard.end_turn(self.now);
            }
            let commands: Vec<StoreCommand> = self.store_inbox.try_iter().collect();
            if !commands.is_empty() {
                busy = true;
                self.store.turn(commands);
            }
            // Presence is another thread's; nothing here asks it anything.
            self.presence_inbox.try_iter().for_each(drop);
            busy |= self.shards.iter().any(|s| !s.inbox.is_empty());
            if !busy {
                return;
            }
        }
        panic!("the shards did not settle");
    }

    /// Moves the clock on by `by`, then drives.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.drive();
    }

    /// `client` sends `bytes` (they are read at the next drive).
    pub fn send(&self, client: &Client, bytes: &[u8]) {
        client.pipe.ends().input.extend(bytes);
    }

    /// The shard's key of `client`'s connection.
    pub fn key(&self, client: &Client) -> u32 {
        client.key
    }

    /// `client` closes its side of the connection.
    pub fn hang_up(&self, client: &Client) {
        client.pipe.ends().closed = true;
    }

    /// What the server wrote to `client` since the last call.
    pub fn received(&self, client: &Client) -> Vec<u8> {
        std::mem::take(&mut client.pipe.ends().output)
    }

    /// The auth payload of a CONNECT as user `n` of the world, plus `extra` fields.
    pub fn auth(&self, n: usize, extra: Value) -> Value {
        let mut auth = serde_json::json!({
            "token": self.world.tokens[n],
            "workspaceId": self.world.workspace,
        });
        if let (Value::Object(auth), Value::Object(extra)) = (&mut auth, extra) {
            auth.extend(extra);
        }
        auth
    }
}

impl World {
    fn create(b: &mut MemoryBackend) -> World {
        let now = chrono::Utc::now();
        let ann = b.create_user("Ann", None, now).expect("user");
        let bob = b.create_user("Bob", None, now).expect("user");
        let workspace = b.create_workspace("acme", "Acme", now).expect("workspace");
        let channel = b
            .create_channel(workspace, "general", "General", false, now)
            .expect("channel");
        let mut tokens = Vec::new();
        for (i, user) in [ann, bob].into_iter().enumerate() {
            b.add_workspace_member(workspace, user, None)
                .expect("member");
            b.add_channel_member(channel, user).expect("member");
            let token = format!("token-of-user-{i}");
            let until = now + chrono::Duration::days(1);
            b.create_session(user, &token, until, now).expect("session");
            tokens.push(token);
        }
        World {
            workspace,
            channel,
            tokens: [tokens[0].clone(), tokens[1].clone()],
        }
    }
}

/// An HTTP request with `Host`, and a body when one is given.
pub fn request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n").into_bytes();
    if method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A WebSocket upgrade request for `/socket.io/`, with a `sid` to take over a polling
/// session.
pub fn websocket_request(sid: Option<&str>) -> Vec<u8> {
    let sid = sid.map_or(String::new(), |s| format!("&sid={s}"));
    format!(
        "GET /socket.io/?EIO=4&transport=websocket{sid} HTTP/1.1\r\nHost: test\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A masked client text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let payload = text.as_bytes();
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What a client read: HTTP responses (status and body) and, after a `101`, the texts of
/// WebSocket frames.
#[derive(Debug, Default)]
pub struct Received {
    /// Each response's status and body.
    pub responses: Vec<(u16, String)>,
    /// Each WebSocket text frame's payload.
    pub frames: Vec<String>,
}

impl Received {
    /// Parses what the server wrote on one connection: HTTP until a `101`, frames after (a
    /// read that starts with no `HTTP/` comes from a WebSocket already switched).
    pub fn parse(mut bytes: &[u8]) -> Received {
        let mut out = Received::default();
        let mut websocket = !bytes.is_empty() && !bytes.starts_with(b"HTTP/");
        while !bytes.is_empty() {
            if websocket {
                let (opcode, len, header) = match (bytes[0] & 0x0f, bytes[1] & 0x7f) {
                    (op, 126) => (op, u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                    (op, 127) => (
                        op,
                        u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    (op, n) => (op, n as usize, 2),
                };
                let payload = &bytes[header..header + len];
                if opcode == 1 {
                    out.frames
                        .push(String::from_utf8(payload.to_vec()).expect("UTF-8"));
                }
                bytes = &bytes[header + len..];
                continue;
            }
            let end = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a whole response head")
                + 4;
            let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
            let status: u16 = head[9..12].parse().expect("a status");
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |l| l.trim().parse().expect("a length"));
            let body = String::from_utf8(bytes[end..end + length].to_vec()).expect("UTF-8");
            out.responses.push((status, body));
            bytes = &bytes[end + length..];
            websocket = status == 101;
        }
        out
    }

    /// The Engine.IO packets of the polling answers (each body split at the separator).
    pub fn packets(&self) -> Vec<String> {
        self.responses
            .iter()
            .filter(|(status, _)| *status == 200)
            .flat_map(|(_, body)| body.split('\u{1e}').map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }
}

/// The `(name, data)` of every `42[…]` event among `packets`.
pub fn events(packets: &[String]) -> Vec<(String, Value)> {
    packets
        .iter()
        .filter_map(|p| p.strip_prefix("42"))
        .map(|p| {
            let v: Value = serde_json::from_str(p).expect("an event array");
            (v[0].as_str().expect("a name").to_owned(), v[1].clone())
        })
        .collect()
}

/// The contents of the `message:new` events among `packets`, in order.
pub fn messages(packets: &[String]) -> Vec<String> {
    events(packets)
        .into_iter()
        .filter(|(name, _)| name == "message:new")
        .map(|(_, data)| data["content"].as_str().expect("content").to_owned())
        .collect()
}
