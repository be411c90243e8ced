//! `loadgen`: drives any server that meets the ocomms-rt contract (Socket.IO v5 / Engine.IO v4
//! over WebSocket) and measures it: connection memory (`idle`), broadcast latency, throughput
//! and delivery correctness (`fanout`, `rooms`, `typing`), handshakes per second (`connect`),
//! and the machine's own loopback write cost (`floor`). It provisions users through the admin
//! API, mints JWTs locally, and prints a human summary followed by one line of JSON for scripts.

#![warn(missing_docs)]

mod admin;
mod attack;
mod attack_io;
mod chatload;
mod client;
mod fanout;
mod floor;
mod net;
mod report;
mod scan;
mod scenario;
mod shared;
mod soak;
mod soak_stats;
mod stats;
mod sys;
mod ws;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and meter for ocomms-rt compatible servers"
)]
pub struct Cli {
    /// Server base URL (plain http only; WebSocket goes to /socket.io/ on the same port).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Admin API bearer token.
    /// Required by every scenario but `floor`.
    #[arg(
        long,
        env = "CHAT_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub admin_token: String,
    /// Secret the server verifies HS256 JWTs with (required by every scenario but `floor`).
    #[arg(
        long,
        env = "CHAT_JWT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub jwt_secret: String,
    /// Server process id, to read its memory and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Further nodes of a cluster (comma-separated URLs). Publishers connect to --url; the
    /// other connections are spread round-robin over --url and these, and delivery latency is
    /// reported separately for receivers on the publishers' node and on the others.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Connect publishers round-robin over the nodes too (`rooms`, where everyone publishes:
    /// sends then enter the cluster through every node).
    #[arg(long)]
    pub spread_publishers: bool,
    /// Process ids of the further nodes, added to --server-pid's CPU and memory.
    #[arg(long, value_delimiter = ',')]
    pub node_pids: Vec<u32>,
    /// The Redis server's process id, to report its CPU.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Client threads, each with its own poll and share of the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most connections in the middle of their handshake at once, per thread.
    #[arg(long, default_value_t = 500)]
    pub max_inflight: usize,
    /// Seconds to wait for all connections to complete CONNECT.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// What to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Connect N authenticated sockets, hold them, and measure the server's memory per connection.
    Idle {
        /// Sockets to connect.
        #[arg(long)]
        connections: usize,
        /// Connections started per second in total (0: as fast as --max-inflight allows).
        #[arg(long, default_value_t = 0.0)]
        ramp: f64,
        /// Seconds to hold all sockets open before measuring.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
        /// Distinct users the sockets authenticate as (default: one per socket).
        #[arg(long)]
        users: Option<usize>,
    },
    /// S members of one channel; P of them publish at a paced total rate; measure ack and
    /// delivery latency and check exactly-once, in-order delivery.
    Fanout {
        /// Channel members connected (one user and socket each).
        #[arg(long)]
        members: usize,
        /// How many of the members publish.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second, over all publishers.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Most seconds to keep receiving after publishing stops.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
        /// Bytes of padding in each message's content (after the timestamp).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Thousands of users spread over hundreds of small channels (user i in channel
    /// i % channels); random users publish; checks every member gets each message of its
    /// channel exactly once and in order, and nothing from other channels.
    Rooms {
        /// Users (one socket each).
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Channels.
        #[arg(long, default_value_t = 200)]
        channels: usize,
        /// Messages per second, over all users.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Most seconds to keep receiving after publishing stops.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
        /// Bytes of padding in each message's content.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// S members of one channel; P of them alternate typing:start / typing:stop at a paced
    /// total rate; measures typing:update fan-out (to everyone but the sender) and its latency.
    Typing {
        /// Channel members connected.
        #[arg(long)]
        members: usize,
        /// How many of the members type.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// typing events per second, over all publishers.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of typing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Most seconds to keep receiving after typing stops.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
    },
    /// C users each connect, authenticate (CONNECT with a JWT), disconnect and start over,
    /// for a duration: handshakes + auth per second.
    Connect {
        /// Connections in flight at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds of cycling.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Honest users in channels (steady sends, typing, history reads) measured every
    /// interval while every attacker of the hostile-clients issue runs at once, then without
    /// them: honest latency, errors and drops, attacker outcomes, server RSS and CPU, and
    /// whether memory stayed flat after the attack.
    Soak {
        /// Honest users (one socket each).
        #[arg(long, default_value_t = 500)]
        users: usize,
        /// Channels the honest users are spread over.
        #[arg(long, default_value_t = 50)]
        channels: usize,
        /// Honest messages per second, over all users.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of the whole run.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds from the start during which the attackers run.
        #[arg(long, default_value_t = 480.0)]
        attack_for: f64,
        /// Seconds per report line.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Honest sends per `typing:start` (0: none).
        #[arg(long, default_value_t = 2)]
        typing_every: u64,
        /// Honest sends per `message:history` read (0: none).
        #[arg(long, default_value_t = 10)]
        history_every: u64,
        /// Attacks to run: all, none, or a comma-separated list of tiny-frames,
        /// metrics-unread, pings-unread, poll-junk, nul-send, long-history, presence-flip,
        /// big-sends, evil-origin, big-post.
        #[arg(long, default_value = "all")]
        attacks: String,
        /// Least seconds between two connections of one attacker.
        #[arg(long, default_value_t = 2.0)]
        reconnect_gap: f64,
        /// How many MiB server RSS may rise above its value at the attack's end and still
        /// count as flat.
        #[arg(long, default_value_t = 16.0)]
        flat_mib: f64,
    },
    /// The machine's cost of one small write on loopback (no server involved).
    Floor {
        /// Socket pairs written to round-robin.
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Writes to time.
        #[arg(long, default_value_t = 200_000)]
        writes: u64,
        /// Bytes per write (a small WebSocket frame).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Pin the writing thread to this CPU.
        #[arg(long)]
        writer_cpu: Option<usize>,
        /// Pin the draining thread to this CPU.
        #[arg(long)]
        reader_cpu: Option<usize>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = scenario::run(&cli) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
