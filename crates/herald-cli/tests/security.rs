//! One test per row of docs/security.md: every credential problem, attack and
//! abuse tried against the real binary, and what Herald answers.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use herald::auth::jwt::{Claims, HeraldClaim, mint, now_secs};
use serde_json::{Value, json};
use support::{Herald, Sse, client, eventually, raw_get};

const SECRET: &str = "0123456789abcdef-test-secret";
const PUBLISH_KEY: &str = "publish-key-0123456789";

fn token(sub: &str, subscribe: &[&str], publish: &[&str], exp_in: i64) -> String {
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp: (now_secs() as i64 + exp_in) as u64,
        nbf: None,
        aud: None,
        iss: None,
        herald: HeraldClaim {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
        },
    };
    mint(SECRET.as_bytes(), &claims).unwrap()
}

fn hub(extra: &[&str]) -> Herald {
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--publish-key",
        PUBLISH_KEY,
        "--anonymous-topics",
        "announcements,public:*",
    ];
    args.extend_from_slice(extra);
    Herald::start(&args)
}

/// GET /events with an optional bearer token; returns (status, JSON body or null).
async fn subscribe(h: &Herald, query: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().get(h.url(&format!("/events?{query}")));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    if status == 200 {
        return (200, Value::Null);
    }
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body: Value = res.json().await.unwrap();
    if let Some(w) = www {
        body["www_authenticate"] = json!(w);
    }
    (status, body)
}

async fn publish(h: &Herald, topic: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(h.url("/publish"))
        .json(&json!({"topic": topic, "data": {"x": 1}}));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn assert_refused(got: (u16, Value), status: u16, code: &str, case: &str) {
    assert_eq!(got.0, status, "{case}: {}", got.1);
    assert_eq!(got.1["error"], code, "{case}: {}", got.1);
    assert!(
        got.1["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{case}"
    );
}

#[tokio::test]
async fn credentials_problems_answer_401() {
    let h = hub(&[]);
    let good = token("42", &["user:{sub}"], &[], 3600);
    assert_eq!(subscribe(&h, "topic=user:42", Some(&good)).await.0, 200);
    let other_secret = {
        let claims: Claims = serde_json::from_value(
            json!({"sub": "42", "exp": now_secs() + 3600, "herald": {"subscribe": ["*"]}}),
        )
        .unwrap();
        mint(b"another-secret-0123456789", &claims).unwrap()
    };
    let not_yet = {
        let claims: Claims = serde_json::from_value(json!({"sub": "42", "exp": now_secs() + 3600, "nbf": now_secs() + 600, "herald": {"subscribe": ["*"]}})).unwrap();
        mint(SECRET.as_bytes(), &claims).unwrap()
    };
    // alg: none, with the claims of a valid token and no signature.
    let none = {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = good.split('.').nth(1).unwrap().to_owned();
        format!("{header}.{payload}.")
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing token", None),
        ("garbled token", Some("not.a.token".into())),
        (
            "expired token",
            Some(token("42", &["user:{sub}"], &[], -3600)),
        ),
        ("not yet valid", Some(not_yet)),
        ("wrong signature", Some(other_secret)),
        ("alg none", Some(none)),
        ("CRLF in token", Some(format!("{good}%0D%0Aevent:%20x"))),
    ];
    for (case, t) in cases {
        let got = subscribe(&h, "topic=user:42", t.as_deref()).await;
        assert_refused(got.clone(), 401, "unauthorized", case);
        assert_eq!(got.1["www_authenticate"], "Bearer", "{case}");
    }
    assert!(h.metric("herald_unauthorized_total").await >= 7.0);
    assert_eq!(h.status().await["connections"], 0, "nothing subscribed");
}

/// Signs `claims` (JSON) with the test secret.
fn signed(claims: Value) -> String {
    let claims: Claims = serde_json::from_value(claims).unwrap();
    mint(SECRET.as_bytes(), &claims).unwrap()
}

#[tokio::test]
async fn a_configured_audience_and_issuer_must_be_in_the_token() {
    let h = hub(&["--jwt-audience", "herald", "--jwt-issuer", "https://idp"]);
    let exp = now_secs() + 3600;
    let rights = json!({"subscribe": ["*"], "publish": ["*"]});
    let with = |extra: Value| {
        let mut c = json!({"sub": "42", "exp": exp, "herald": rights});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(c)
    };
    let both = with(json!({"aud": "herald", "iss": "https://idp"}));
    assert_eq!(subscribe(&h, "topic=a", Some(&both)).await.0, 200);
    // RFC 7519: `aud` may be an array; one of its values must match.
    let listed = with(json!({"aud": ["other", "herald"], "iss": "https://idp"}));
    assert_eq!(subscribe(&h, "topic=a", Some(&listed)).await.0, 200);
    assert_eq!(publish(&h, "a", Some(&listed)).await.0, 200);
    let cases = [
        ("no aud", with(json!({"iss": "https://idp"}))),
        ("no iss", with(json!({"aud": "herald"}))),
        ("neither", with(json!({}))),
        (
            "wrong aud",
            with(json!({"aud": "other", "iss": "https://idp"})),
        ),
        (
            "wrong aud list",
            with(json!({"aud": ["a", "b"], "iss": "https://idp"})),
        ),
        (
            "wrong iss",
            with(json!({"aud": "herald", "iss": "https://evil"})),
        ),
    ];
    for (case, t) in &cases {
        assert_refused(
            subscribe(&h, "topic=a", Some(t)).await,
            401,
            "unauthorized",
            case,
        );
        assert_refused(publish(&h, "a", Some(t)).await, 401, "unauthorized", case);
    }
    assert_eq!(
        h.status().await["events_published"],
        1,
        "only the good token published"
    );
}

#[tokio::test]
async fn an_expiry_beyond_what_the_clock_holds_never_expires() {
    // 2^63 seconds overflows the system clock: the hub used to panic on the
    // request (no answer at all). The token is valid and never expires.
    let h = hub(&[]);
    let far = signed(
        json!({"sub": "42", "exp": 1u64 << 63, "herald": {"subscribe": ["*"], "publish": ["*"]}}),
    );
    let mut s = Sse::open(&h.url(&format!("/events?topic=a&access_token={far}")), None).await;
    assert_eq!(publish(&h, "a", Some(&far)).await.0, 200);
    assert_eq!(s.next().await.json(), json!({"x": 1}));
    let max = signed(json!({"exp": u64::MAX, "herald": {"subscribe": ["*"]}}));
    assert_eq!(subscribe(&h, "topic=a", Some(&max)).await.0, 200);
}

/// RFC 7519 dates may be fractional: such a token is valid (it was refused as
/// malformed); past, it is expired like any other.
#[tokio::test]
async fn fractional_dates_are_read() {
    let h = hub(&[]);
    let claims = |exp: f64, nbf: f64| {
        // Signed as raw JSON: `Claims` itself holds whole seconds.
        signed_raw(
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"exp": exp, "nbf": nbf, "herald": {"subscribe": ["*"]}}),
        )
    };
    let now = now_secs() as f64;
    let valid = claims(now + 3600.5, now - 10.25);
    assert_eq!(subscribe(&h, "topic=a", Some(&valid)).await.0, 200);
    let expired = claims(now - 3600.5, now - 7200.5);
    assert_refused(
        subscribe(&h, "topic=a", Some(&expired)).await,
        401,
        "unauthorized",
        "fractional exp in the past",
    );
}

/// Signs a raw JWS header and body (JSON) with the test secret, HS256.
fn signed_raw(header: Value, body: Value) -> String {
    let header = base64_url(header.to_string().as_bytes());
    let payload = base64_url(body.to_string().as_bytes());
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(
        format!("{header}.{payload}").as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{header}.{payload}.{signature}")
}

#[tokio::test]
async fn critical_header_extensions_are_refused() {
    // RFC 7515 4.1.11: a receiver that does not understand an extension listed in
    // `crit` must refuse the token, however well it is signed.
    let h = hub(&[]);
    let body = json!({"exp": now_secs() + 3600, "herald": {"subscribe": ["*"], "publish": ["*"]}});
    let plain = signed_raw(json!({"alg": "HS256", "typ": "JWT"}), body.clone());
    assert_eq!(subscribe(&h, "topic=a", Some(&plain)).await.0, 200);
    for (header, case) in [
        (
            json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
            "crit naming an extension",
        ),
        (
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            "crit b64 (RFC 7797)",
        ),
        (json!({"alg": "HS256", "crit": []}), "an empty crit"),
    ] {
        let token = signed_raw(header, body.clone());
        let got = subscribe(&h, "topic=a", Some(&token)).await;
        assert!(
            got.1["detail"].as_str().unwrap_or("").contains("critical"),
            "{case}: {got:?}"
        );
        assert_refused(got, 401, "unauthorized", case);
        assert_refused(
            publish(&h, "a", Some(&token)).await,
            401,
            "unauthorized",
            case,
        );
    }
}

/// Base64url without padding.
fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn hs_rs_confusion_is_rejected() {
    // The hub trusts an RSA public key; an attacker signs HS256 with that public key
    // as the HMAC secret. The algorithm is pinned by the key type: 401.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap()
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl");
    let h = Herald::start(&["--jwt-public-key", public.to_str().unwrap()]);
    let claims: Claims = serde_json::from_value(
        json!({"sub": "1", "exp": now_secs() + 3600, "herald": {"subscribe": ["*"]}}),
    )
    .unwrap();
    let forged = mint(&std::fs::read(&public).unwrap(), &claims).unwrap();
    assert_refused(
        subscribe(&h, "topic=t", Some(&forged)).await,
        401,
        "unauthorized",
        "HS256 signed with the RSA public key",
    );
    // A real RS256 token from the private key is accepted.
    let real = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(subscribe(&h, "topic=t", Some(&real)).await.0, 200);
}

#[tokio::test]
async fn topics_outside_the_token_answer_403_naming_them() {
    let h = hub(&[]);
    let t = token("42", &["user:{sub}", "workspace:acme:*"], &[], 3600);
    assert_eq!(
        subscribe(
            &h,
            "topic=user:42,workspace:acme:board,announcements",
            Some(&t)
        )
        .await
        .0,
        200
    );
    let got = subscribe(&h, "topic=user:42,user:43,workspace:acmex", Some(&t)).await;
    assert_refused(got.clone(), 403, "forbidden", "another user's topic");
    assert_eq!(got.1["topics"], json!(["user:43", "workspace:acmex"]));
    // Anonymous topics need no token; others do.
    assert_eq!(
        subscribe(&h, "topic=announcements,public:news", None)
            .await
            .0,
        200
    );
    assert_refused(
        subscribe(&h, "topic=announcements,user:42", None).await,
        401,
        "unauthorized",
        "mixed anonymous",
    );
    assert!(h.metric("herald_forbidden_total").await >= 1.0);
}

#[tokio::test]
async fn sub_substitution_cannot_escape_its_topic() {
    let h = hub(&[]);
    for sub in ["*", "1:admin", "a\nb", "x/y", "a,b"] {
        let t = token(sub, &["user:{sub}"], &[], 3600);
        // Whatever the subject, the pattern grants nothing: 403 on any user topic.
        for topic in ["user:1", "user:1:admin", "user:x"] {
            let got = subscribe(&h, &format!("topic={topic}"), Some(&t)).await;
            assert_eq!(got.0, 403, "sub {sub:?} topic {topic}: {}", got.1);
        }
    }
}

#[tokio::test]
async fn wildcard_subscriptions_are_not_topics() {
    let h = hub(&[]);
    let t = token("42", &["*"], &[], 3600);
    for q in ["topic=*", "topic=user:*", "topic=a*b"] {
        assert_refused(subscribe(&h, q, Some(&t)).await, 400, "bad_topic", q);
    }
}

#[tokio::test]
async fn token_from_header_cookie_or_query() {
    let h = hub(&["--jwt-cookie", "herald_token"]);
    let t = token("7", &["user:{sub}"], &[], 3600);
    assert_eq!(subscribe(&h, "topic=user:7", Some(&t)).await.0, 200);
    let res = client()
        .get(h.url("/events?topic=user:7"))
        .header("cookie", format!("other=1; herald_token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "cookie");
    drop(res);
    assert_eq!(
        subscribe(&h, &format!("topic=user:7&access_token={t}"), None)
            .await
            .0,
        200,
        "query"
    );
    // The query token is never logged.
    let log = h.log.lock().unwrap().join("\n");
    assert!(!log.contains(&t), "token in the log");
}

#[tokio::test]
async fn stream_ends_when_the_token_expires() {
    let h = hub(&[]);
    // exp in 1 s; the leeway is 5 s, so the stream ends about 6 s later.
    let t = token("7", &["user:{sub}"], &[], 1);
    let mut req = client()
        .get(h.url("/events?topic=user:7"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(req.status(), 200);
    let mut body = Vec::new();
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, req.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.trim_end().ends_with("retry: 2000"),
        "ends with a retry hint: {text}"
    );
}

/// A stream that never goes idle (its client keeps the socket full) ends at expiry
/// too: an event published after its credentials expired is not delivered, however
/// much the stream still had to write when they did.
#[tokio::test]
async fn a_busy_stream_ends_when_the_token_expires() {
    busy_stream_ends_at_expiry(&[]).await;
}

/// The same with a write linger, whose streams are written by their tasks alone.
/// (The linger's own timing around expiry is tested on a paused clock in the
/// library's `stream.rs`.)
#[tokio::test]
async fn a_busy_lingering_stream_ends_when_the_token_expires() {
    busy_stream_ends_at_expiry(&["--write-linger", "25ms"]).await;
}

async fn busy_stream_ends_at_expiry(extra: &[&str]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut args = vec!["--queue-size", "1024"];
    args.extend_from_slice(extra);
    let h = hub(&args);
    // exp now; with the 5 s leeway the stream may run about 5 s.
    let t = token("7", &["user:{sub}"], &[], 0);
    let started = std::time::Instant::now();
    let mut sock = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let req = format!("GET /events?topic=user:7 HTTP/1.0\r\nAuthorization: Bearer {t}\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    eventually("subscribed", || async {
        h.status().await["subscriptions"] == 1
    })
    .await;
    // ~18 MB that the client does not read yet: the socket fills up and the
    // stream's task is left writing.
    let publish = |i: u64, pad: &str| {
        let body = json!({"topic": "user:7", "event": "n", "data": {"i": i, "pad": pad}});
        let req = client()
            .post(h.url("/publish"))
            .bearer_auth(PUBLISH_KEY)
            .json(&body);
        async move { assert_eq!(req.send().await.unwrap().status(), 200) }
    };
    let big = "z".repeat(30_000);
    for i in 0..600 {
        publish(i, &big).await;
    }
    if extra.is_empty() {
        assert!(
            h.metric("herald_writes_handed_back_total").await >= 1.0,
            "a publisher found the socket full and handed the stream to its task"
        );
    }
    // Past the expiry and its leeway (5 s), but within the write timeout (15 s).
    tokio::time::sleep(std::time::Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    publish(1_000_000, "after expiry").await;
    let mut body = Vec::new();
    tokio::time::timeout(support::DEADLINE, sock.read_to_end(&mut body))
        .await
        .expect("the stream ends")
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("\"i\":0,"), "it streamed before expiry");
    assert!(
        !text.contains("after expiry"),
        "an event published after expiry was delivered"
    );
    assert!(
        text.trim_end().ends_with("retry: 2000"),
        "ends with a retry hint: {}",
        &text[text.len().saturating_sub(300)..]
    );
}

#[tokio::test]
async fn publishing_needs_a_key_or_publish_rights() {
    let h = hub(&[]);
    assert_refused(
        publish(&h, "user:1", None).await,
        401,
        "unauthorized",
        "no credentials",
    );
    assert_refused(
        publish(&h, "user:1", Some("wrong-key-0123456789")).await,
        401,
        "unauthorized",
        "wrong key",
    );
    assert_eq!(
        publish(&h, "user:1", Some(PUBLISH_KEY)).await.0,
        200,
        "publish key"
    );
    let writer = token("svc", &[], &["user:*"], 3600);
    assert_eq!(
        publish(&h, "user:1", Some(&writer)).await.0,
        200,
        "publish rights"
    );
    let got = publish(&h, "admin:1", Some(&writer)).await;
    assert_refused(got.clone(), 403, "forbidden", "outside publish rights");
    assert_eq!(got.1["topics"], json!(["admin:1"]));
    let reader = token("42", &["*"], &[], 3600);
    assert_refused(
        publish(&h, "user:1", Some(&reader)).await,
        403,
        "forbidden",
        "subscribe-only token",
    );
    assert_refused(
        publish(&h, "announcements", Some(&reader)).await,
        403,
        "forbidden",
        "anonymous topics are not publishable",
    );
    assert_eq!(
        h.status().await["events_published"],
        2,
        "only the allowed publishes"
    );
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let h = hub(&["--cors-origin", "https://app.example.com"]);
    let pre = |origin: &'static str| {
        client()
            .request(
                reqwest::Method::OPTIONS,
                h.url("/events?topic=announcements"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "last-event-id")
            .send()
    };
    let ok = pre("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("last-event-id")
    );
    let bad = pre("https://evil.example").await.unwrap();
    assert_eq!(bad.status(), 403);
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "cors_origin_not_allowed");
    assert_eq!(h.metric("herald_cors_rejected_total").await, 1.0);
    // The event stream itself carries the header for the allowed origin only.
    let out = raw_get(h.addr, "GET /events?topic=announcements HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\n\r\n", "id: ").await;
    assert!(
        out.contains("access-control-allow-origin: https://app.example.com\r\n"),
        "{out}"
    );
    let out = raw_get(h.addr, "GET /events?topic=announcements HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n", "id: ").await;
    assert!(!out.contains("access-control-allow-origin"), "{out}");
    // `*` allows any origin, without credentials.
    let any = Herald::start(&["--cors-origin", "*"]);
    let res = client()
        .get(any.url("/status"))
        .header("origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(
        res.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let h = hub(&["--max-connections-per-ip", "2"]);
    let a = Sse::open(&h.url("/events?topic=announcements"), None).await;
    let _b = Sse::open(&h.url("/events?topic=announcements"), None).await;
    let got = subscribe(&h, "topic=announcements", None).await;
    assert_refused(
        got,
        429,
        "too_many_connections",
        "third stream from one address",
    );
    assert_eq!(
        h.metric("herald_connections_per_ip_rejected_total").await,
        1.0
    );
    drop(a);
    eventually("a slot frees up", || async {
        h.status().await["connections"] == 1
    })
    .await;
    let _c = Sse::open(&h.url("/events?topic=announcements"), None).await;
}

/// Requests the hub hands to its router rather than serving itself (an
/// absolute-form URI, a request body, more headers than its own parser takes)
/// count against the per-address limit too. They used to open streams past it.
#[tokio::test]
async fn the_per_address_limit_holds_for_every_form_of_request() {
    let h = hub(&["--max-connections-per-ip", "1"]);
    let _a = Sse::open(&h.url("/events?topic=announcements"), None).await;
    let many: String = (0..50).map(|i| format!("X-Pad-{i}: 1\r\n")).collect();
    let odd = [
        "GET http://x/events?topic=announcements HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET /events?topic=announcements HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
        "GET /events?topic=announcements HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n".to_owned(),
        format!("GET /events?topic=announcements HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    ];
    for req in &odd {
        let out = raw_get(h.addr, req, "}").await;
        assert!(out.starts_with("HTTP/1.1 429"), "{req:?}: {out}");
        assert!(out.contains(r#""error":"too_many_connections""#), "{out}");
    }
    assert_eq!(h.status().await["connections"], 1);
    assert_eq!(
        h.metric("herald_connections_per_ip_rejected_total").await,
        4.0
    );
}

#[tokio::test]
async fn oversized_query_gets_431() {
    let h = hub(&[]);
    let q = "t".repeat(20 * 1024);
    let out = raw_get(
        h.addr,
        &format!("GET /events?topic={q} HTTP/1.1\r\nHost: x\r\n\r\n"),
        "}",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
}

#[test]
fn publish_keys_are_not_split_on_commas() {
    // Found by a review: keys were split on commas, so a key holding one became
    // two shorter keys, each good enough to publish on its own.
    let key = "abcdefghijklmnop,qrstuvwxyz012345";
    let by_flag = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--publish-key", key])
        .output()
        .unwrap();
    let by_env = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_PUBLISH_KEY", key)
        .output()
        .unwrap();
    for out in [by_flag, by_env] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("a publish key may hold only"), "{err}");
    }
}

#[tokio::test]
async fn several_publish_keys_are_separate_values() {
    let h = Herald::start(&[
        "--publish-key",
        "first-key-0123456789",
        "--publish-key",
        "second-key-0123456789+/==",
    ]);
    for key in ["first-key-0123456789", "second-key-0123456789+/=="] {
        assert_eq!(publish(&h, "a", Some(key)).await.0, 200, "{key}");
    }
    assert_eq!(publish(&h, "a", Some("first-key-0123")).await.0, 401);
}

#[test]
fn refuses_to_start_open_on_a_public_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without authentication") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

#[tokio::test]
async fn insecure_no_auth_and_minted_tokens_work() {
    let open = Herald::start(&["--insecure-no-auth"]);
    assert_eq!(subscribe(&open, "topic=x", None).await.0, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--sub",
            "42",
            "--subscribe",
            "user:{sub}",
            "--ttl",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let h = hub(&[]);
    assert_eq!(subscribe(&h, "topic=user:42", Some(&minted)).await.0, 200);
    assert_eq!(subscribe(&h, "topic=user:43", Some(&minted)).await.0, 403);
}

#[test]
fn herald_token_refuses_what_the_hub_would_not_honour() {
    let token = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("token")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, says) in [
        (
            &["--secret", "short", "--subscribe", "a"][..],
            "at least 16",
        ),
        (
            &["--secret", SECRET, "--subscribe", "a*b"],
            "invalid topic pattern",
        ),
        (&["--secret", SECRET, "--publish", "bad topic"], "--publish"),
        (
            &["--secret", SECRET, "--subscribe", "user:{sub}"],
            "subject",
        ),
        (
            &[
                "--secret",
                SECRET,
                "--sub",
                "a:b",
                "--subscribe",
                "user:{sub}",
            ],
            "subject",
        ),
        (
            &["--secret", SECRET, "--subscribe", "a", "--ttl", "0s"],
            "--ttl 0",
        ),
    ] {
        let (ok, stdout, stderr) = token(args);
        assert!(!ok && stdout.is_empty(), "{args:?} minted {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (ok, stdout, stderr) = token(&["--secret", SECRET]);
    assert!(ok && !stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("grants no topic"), "{stderr}");
    let (ok, _, stderr) = token(&[
        "--secret",
        SECRET,
        "--sub",
        "7",
        "--subscribe",
        "user:{sub}",
    ]);
    assert!(ok && stderr.is_empty(), "{stderr}");
}
