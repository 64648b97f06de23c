//! The `herald` executable: `herald serve` runs the hub.

mod config;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use config::{Command, LogFormat, Serve};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("herald: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let serve = match cli.command {
        Command::Serve(serve) => serve,
        Command::Token(token) => return mint(&token),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = serve.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(*serve)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn mint(t: &config::Token) -> std::process::ExitCode {
    use herald::auth::jwt::{Claims, HeraldClaim, mint, now_secs};
    // Refuse a token the hub would not honour rather than print it: a secret the hub
    // refuses to start with, a pattern it would never grant, a lifetime of nothing.
    if let Err(why) = token_problem(t) {
        eprintln!("herald: cannot mint a token: {why}");
        return std::process::ExitCode::FAILURE;
    }
    if t.subscribe.is_empty() && t.publish.is_empty() {
        eprintln!(
            "herald: warning: the token grants no topic (add --subscribe or --publish patterns)"
        );
    }
    let claims = Claims {
        sub: t.sub.clone(),
        exp: now_secs().saturating_add(t.ttl.as_secs()),
        nbf: None,
        aud: t.audience.clone().map(Into::into),
        iss: t.issuer.clone(),
        herald: HeraldClaim {
            subscribe: t.subscribe.clone(),
            publish: t.publish.clone(),
        },
    };
    match mint(t.secret.as_bytes(), &claims) {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald: cannot mint a token: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why `herald token` should not sign these settings, if it should not.
fn token_problem(t: &config::Token) -> Result<(), String> {
    use herald::auth::{Pattern, jwt::MIN_SECRET_LEN};
    if t.secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret is {} bytes; the hub accepts only secrets of at least {MIN_SECRET_LEN}",
            t.secret.len()
        ));
    }
    if t.ttl.is_zero() {
        return Err("--ttl 0 would mint a token that has already expired".into());
    }
    for (flag, pattern) in t
        .subscribe
        .iter()
        .map(|p| ("--subscribe", p))
        .chain(t.publish.iter().map(|p| ("--publish", p)))
    {
        Pattern::parse(pattern, t.sub.as_deref()).map_err(|e| format!("{flag}: {e}"))?;
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(serve: Serve) -> anyhow::Result<()> {
    init_logging(serve.log_format);
    let auth = herald::auth::jwt::JwtAuthorizer::new(&serve.jwt_config()?)
        .context("invalid authentication settings")?;
    if !auth.is_enabled() && !serve.listen.ip().is_loopback() && !serve.insecure_no_auth {
        anyhow::bail!(
            "refusing to listen on {} without authentication: anyone could publish and subscribe. \
             Set --jwt-secret or --jwt-public-key (and/or --publish-key), \
             or pass --insecure-no-auth if a private network or a proxy guards the hub",
            serve.listen
        );
    }
    let hub = match serve.redis_config() {
        None => herald::Hub::new(serve.hub_config()).context("invalid settings")?,
        Some(redis) => herald::Hub::with_redis(serve.hub_config(), redis)
            .await
            .context("cannot start the Redis backend")?,
    };
    if auth.is_enabled() {
        hub.set_authorizer(auth);
    }
    let listener =
        listen(serve.listen).with_context(|| format!("cannot listen on {}", serve.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Tests and scripts read this line to find an ephemeral port.
    tracing::info!(%addr, backend = hub.status().backend, "herald listening on http://{addr}");

    hub.serve(
        listener,
        hub.router(),
        serve.serve_options(),
        wait_for_signal(),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds with a deep accept queue: bursts of reconnecting clients (a deploy, a
/// network blip) should queue, not have their SYNs dropped and retried a second later.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
