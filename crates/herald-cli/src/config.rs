//! `herald serve` settings: flags, then `HERALD_*` environment variables, then the
//! `--config` TOML file, then defaults.
//!
//! The TOML file uses the flag names as keys (`max-connections = 500`, or
//! `max_connections`). It is applied by parsing the command line a second time with
//! the file's values placed before the real arguments, for the settings that neither
//! a flag nor the environment set: one parser, one set of error messages.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Herald: a Server-Sent Events notification hub.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, args_override_self = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the hub.
    Serve(Box<Serve>),
    /// Mint an HS256 token for testing (prints it).
    Token(Token),
}

/// `herald token`: mint a token signed with a shared secret.
#[derive(Debug, Clone, Args)]
pub(crate) struct Token {
    /// The HS256 secret (the hub's --jwt-secret).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub(crate) secret: String,
    /// The subject (`sub`), substituted for {sub} in patterns.
    #[arg(long)]
    pub(crate) sub: Option<String>,
    /// Topic patterns the bearer may subscribe to (repeatable).
    #[arg(long)]
    pub(crate) subscribe: Vec<String>,
    /// Topic patterns the bearer may publish to (repeatable).
    #[arg(long)]
    pub(crate) publish: Vec<String>,
    /// Lifetime (e.g. 1h, 15m).
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub(crate) ttl: Duration,
    /// Audience (`aud`).
    #[arg(long)]
    pub(crate) audience: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    pub(crate) issuer: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of `herald serve`. Log levels come from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Args)]
pub(crate) struct Serve {
    /// TOML file with settings (keys are the flag names); flags and env win over it.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// Threads that run the hub (default: one per CPU core). Fewer spend less CPU on
    /// waking each other when the load is light, more take higher rates
    /// (BENCHMARKS.md measures both).
    #[arg(long, env = "HERALD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) worker_threads: Option<u16>,

    /// Interval between heartbeats on idle streams (e.g. 15s, 500ms).
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub(crate) heartbeat: Duration,

    /// Send heartbeats as `event: heartbeat` with `data: {}` instead of SSE comments.
    #[arg(long, env = "HERALD_HEARTBEAT_EVENT")]
    pub(crate) heartbeat_event: bool,

    /// Open event streams allowed at once; beyond it: 503 with Retry-After.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) max_connections: usize,

    /// Events a subscriber may fall behind on one topic before it is disconnected (it resumes from its cursor). Also the most events one publish batch may hold for one topic.
    #[arg(long, env = "HERALD_QUEUE_SIZE", default_value_t = 256)]
    pub(crate) queue_size: usize,

    /// Largest event `data`, as compact JSON, in bytes; beyond it: 413.
    #[arg(long, env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = 65_536)]
    pub(crate) max_payload_bytes: usize,

    /// Topics allowed on one connection.
    #[arg(long, env = "HERALD_MAX_TOPICS", default_value_t = 32)]
    pub(crate) max_topics: usize,

    /// Events kept per topic for resume (0 turns history off).
    #[arg(long, env = "HERALD_RETENTION_EVENTS", default_value_t = 1000)]
    pub(crate) retention_events: usize,

    /// How long events are kept for resume (e.g. 1h, 10m).
    #[arg(long, env = "HERALD_RETENTION_TTL", default_value = "1h", value_parser = duration)]
    pub(crate) retention_ttl: Duration,

    /// The `retry:` hint sent to clients: how long they wait before reconnecting.
    #[arg(long, env = "HERALD_RETRY", default_value = "2s", value_parser = duration)]
    pub(crate) retry: Duration,

    /// Redis URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS):
    /// selects the Redis backend, so several instances act as one hub. Repeat it
    /// (or separate with commas) to give Cluster seed nodes; percent-encode a comma
    /// in a password (`%2C`). Without it: in-memory.
    #[arg(
        long = "redis-url",
        env = "HERALD_REDIS_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub(crate) redis_url: Vec<String>,

    /// Talk to a Redis Cluster (sharded pub/sub); the --redis-url values are seed nodes.
    #[arg(long, env = "HERALD_REDIS_CLUSTER", requires = "redis_url")]
    pub(crate) redis_cluster: bool,

    /// Prefix of Redis keys and channels, to keep environments sharing a Redis apart.
    #[arg(long, env = "HERALD_CHANNEL_PREFIX", default_value = "herald")]
    pub(crate) channel_prefix: String,

    /// HS256 secret checking subscriber and publisher tokens (at least 16 bytes).
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub(crate) jwt_secret: Option<String>,

    /// PEM public key file checking tokens: RS256, ES256 or EdDSA by the key's type.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub(crate) jwt_public_key: Option<PathBuf>,

    /// Required token audience (`aud`).
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub(crate) jwt_audience: Option<String>,

    /// Required token issuer (`iss`).
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub(crate) jwt_issuer: Option<String>,

    /// Cookie that may carry the token (same-site browser apps).
    #[arg(long, env = "HERALD_JWT_COOKIE")]
    pub(crate) jwt_cookie: Option<String>,

    /// Static bearer key that may publish to any topic (repeatable; at least 16
    /// characters of A-Z a-z 0-9 - . _ ~ + /). Not split on commas: a comma in a key
    /// is refused rather than turned into two weaker keys.
    #[arg(
        long = "publish-key",
        env = "HERALD_PUBLISH_KEY",
        hide_env_values = true
    )]
    pub(crate) publish_key: Vec<String>,

    /// Topic patterns anyone may subscribe to without a token (repeatable; e.g. announcements, public:*).
    #[arg(
        long = "anonymous-topics",
        env = "HERALD_ANONYMOUS_TOPICS",
        value_delimiter = ','
    )]
    pub(crate) anonymous_topics: Vec<String>,

    /// Allow running without authentication on a non-loopback address.
    #[arg(long, env = "HERALD_INSECURE_NO_AUTH")]
    pub(crate) insecure_no_auth: bool,

    /// Origin allowed to use the hub from a browser page (repeatable); * for any (without credentials).
    #[arg(
        long = "cors-origin",
        env = "HERALD_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub(crate) cors_origin: Vec<String>,

    /// Open streams allowed from one client address (0: no limit).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub(crate) max_connections_per_ip: usize,

    /// A topic every stream receives without asking or being authorized for it
    /// (publish to it to reach every connection).
    #[arg(long, env = "HERALD_BROADCAST_TOPIC")]
    pub(crate) broadcast_topic: Option<String>,

    /// Topics starting with this prefix are exclusive (repeatable, e.g. session:):
    /// a new stream on one replaces the one holding it, on any instance.
    #[arg(
        long = "exclusive-prefix",
        env = "HERALD_EXCLUSIVE_PREFIX",
        value_delimiter = ','
    )]
    pub(crate) exclusive_prefix: Vec<String>,

    /// Write each stream's events at most once per flush tick (every this long; 0:
    /// write at once): events less than a tick after the previous write wait for
    /// the next tick and share one write; a first event after a quiet spell goes
    /// out at once. Fewer writes on busy topics, for up to that much latency.
    #[arg(long, env = "HERALD_WRITE_LINGER", default_value = "0s", value_parser = duration)]
    pub(crate) write_linger: Duration,

    /// A write blocked this long (the client stopped reading) closes its connection.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub(crate) write_timeout: Duration,

    /// Time a client has to send its request head, and again a publish body (slowloris guard; 408 after).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) header_read_timeout: Duration,

    /// How long a shutdown waits for connections to close before exiting.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration)]
    pub(crate) shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 15s, 500ms, 1h)"))
}

impl Serve {
    /// The authorizer settings; reads the public key file.
    pub(crate) fn jwt_config(&self) -> anyhow::Result<herald::auth::jwt::JwtConfig> {
        use herald::auth::jwt::JwtKey;
        let key = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(s), _) => Some(JwtKey::Secret(s.as_bytes().to_vec())),
            (None, Some(path)) => Some(JwtKey::PublicKeyPem(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --jwt-public-key {}", path.display()))?,
            )),
            (None, None) => None,
        };
        Ok(herald::auth::jwt::JwtConfig {
            key,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            cookie: self.jwt_cookie.clone(),
            anonymous_topics: self.anonymous_topics.clone(),
            publish_keys: self.publish_key.clone(),
        })
    }

    pub(crate) fn serve_options(&self) -> herald::ServeOptions {
        herald::ServeOptions {
            write_timeout: self.write_timeout,
            header_read_timeout: self.header_read_timeout,
            shutdown_grace: self.shutdown_grace,
            // The binary's router is the hub's own, guarded by its authorizer.
            native_events: true,
        }
    }

    /// The Redis settings, when a Redis URL is given.
    pub(crate) fn redis_config(&self) -> Option<herald::RedisConfig> {
        (!self.redis_url.is_empty()).then(|| herald::RedisConfig {
            urls: self.redis_url.clone(),
            cluster: self.redis_cluster,
            channel_prefix: self.channel_prefix.clone(),
            fail_open: false,
        })
    }

    pub(crate) fn hub_config(&self) -> herald::HubConfig {
        herald::HubConfig {
            heartbeat: self.heartbeat,
            heartbeat_event: self.heartbeat_event,
            retry: self.retry,
            max_connections: self.max_connections,
            queue_size: self.queue_size,
            max_payload_bytes: self.max_payload_bytes,
            max_topics: self.max_topics,
            retention_events: self.retention_events,
            retention_ttl: self.retention_ttl,
            cors_origins: self.cors_origin.clone(),
            max_connections_per_ip: self.max_connections_per_ip,
            broadcast_topic: self.broadcast_topic.clone(),
            exclusive_prefixes: self.exclusive_prefix.clone(),
            write_linger: self.write_linger,
        }
    }
}

/// Parses the command line, the environment and the `--config` file.
pub(crate) fn parse() -> anyhow::Result<Cli> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Command::Serve(serve) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = serve.config.clone() else {
        return Ok(cli);
    };
    let Some((_, sub)) = matches.subcommand() else {
        return Ok(cli);
    };
    let injected = file_args(&path, sub)?;
    // Program name and subcommand, then the file's settings, then the real arguments
    // (which win: `args_override_self` keeps the last value).
    let mut merged: Vec<OsString> = args.iter().take(2).cloned().collect();
    merged.extend(injected.into_iter().map(OsString::from));
    merged.extend(args.iter().skip(2).cloned());
    let matches = Cli::command().get_matches_from(&merged);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// `--flag=value` arguments for the file's settings that no flag or env var set.
fn file_args(path: &PathBuf, matches: &ArgMatches) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: BTreeMap<String, toml::Value> = toml::from_str(&text)
        .with_context(|| format!("invalid TOML in config file {}", path.display()))?;
    let known: Vec<String> = Serve::command_for_keys();
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" || !known.contains(&flag) {
            bail!(
                "unknown setting {key:?} in config file {} (known: {})",
                path.display(),
                known.join(", ")
            );
        }
        let id = flag.replace('-', "_");
        if matches.value_source(&id) != Some(ValueSource::DefaultValue)
            && matches.value_source(&id).is_some()
        {
            continue; // set by a flag or the environment: they win
        }
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{flag}")),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("--{flag}={s}")),
            toml::Value::Integer(i) => out.push(format!("--{flag}={i}")),
            toml::Value::Array(items) => {
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(format!("--{flag}={s}")),
                        other => bail!(
                            "setting {key:?} in config file {} must hold strings, not {}",
                            path.display(),
                            other.type_str()
                        ),
                    }
                }
            }
            other => bail!(
                "setting {key:?} in config file {} must be a string, integer, boolean or list of strings, not {}",
                path.display(),
                other.type_str()
            ),
        }
    }
    Ok(out)
}

impl Serve {
    /// The long flag names of `serve`.
    fn command_for_keys() -> Vec<String> {
        Self::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }
}
