//! The hub's authorizer: JWTs for subscribers and publishers, static keys for
//! trusted backends, anonymous topics for everyone.
//!
//! - **Keys and algorithms.** A shared secret means HS256; a PEM public key means
//!   RS256, ES256 or EdDSA, by the key's type. The algorithm is pinned by the key,
//!   never taken from the token's header: `alg: none` and HS/RS confusion fail.
//! - **Claims.** `exp` is required, `nbf` is checked, both with a 5 s leeway;
//!   `aud`/`iss` when configured. Rights are in a `herald` claim:
//!   `{"herald": {"subscribe": ["user:{sub}", "workspace:acme:*"], "publish": ["*"]}}`,
//!   with `{sub}` replaced by the token's `sub` (see [`Pattern`]).
//! - **Where the token comes from.** `Authorization: Bearer <token>`, else the
//!   configured cookie, else (subscribe only) the `access_token` query parameter,
//!   for cross-site `EventSource`, which cannot send headers. A query token can end
//!   up in proxy and browser history logs: prefer the cookie when the page and the
//!   hub share a site. Herald never logs tokens.
//! - **Which side is guarded.** Subscribing needs a token (or an anonymous topic)
//!   when a JWT key is configured; publishing needs a publish key or a token with
//!   `publish` rights when a JWT key or a publish key is configured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AuthError, Authorize, Decision, Pattern, PatternError};
use crate::backend::BoxFuture;
use crate::event::Topic;

/// Leeway for `exp` and `nbf`, for clocks that differ a little.
const LEEWAY_SECS: u64 = 5;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub enum JwtKey {
    /// A shared secret: HS256.
    Secret(Vec<u8>),
    /// A PEM public key: RS256 (RSA), ES256 (EC P-256) or EdDSA (Ed25519).
    PublicKeyPem(Vec<u8>),
}

/// Settings of [`JwtAuthorizer`].
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// Checks subscriber and publisher tokens; `None`: no tokens accepted.
    pub key: Option<JwtKey>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Cookie that may carry the token.
    pub cookie: Option<String>,
    /// Patterns anyone may subscribe to.
    pub anonymous_topics: Vec<String>,
    /// Static bearer keys that may publish anywhere.
    pub publish_keys: Vec<String>,
}

/// The authorizer could not be set up.
#[derive(Debug, Error)]
pub enum JwtSetupError {
    /// The key cannot be read.
    #[error("invalid JWT key: {0}")]
    BadKey(String),
    /// An anonymous-topic pattern is invalid.
    #[error(transparent)]
    BadPattern(#[from] PatternError),
    /// A publish key is too short to be a secret.
    #[error("publish keys must be at least 16 characters")]
    WeakPublishKey,
    /// A publish key has characters a bearer token cannot carry (RFC 6750
    /// `b64token`): a comma or a space in it was most likely meant to separate keys.
    #[error(
        "a publish key may hold only A-Z a-z 0-9 - . _ ~ + / (and = at its end); give several keys as separate values"
    )]
    BadPublishKey,
}

/// The `herald` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeraldClaim {
    /// Patterns the bearer may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns the bearer may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// The claims Herald reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The subject, for `{sub}` in patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry (seconds since the Unix epoch; a fractional value, which RFC 7519
    /// allows, is read rounded down).
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before (seconds since the Unix epoch).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Audience: one, or several (RFC 7519 allows both forms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Herald rights.
    #[serde(default)]
    pub herald: HeraldClaim,
}

/// A NumericDate (RFC 7519): whole or fractional seconds, not negative.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumericDate {
    Whole(u64),
    Fraction(f64),
}

impl NumericDate {
    fn seconds<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            Self::Whole(s) => Ok(s),
            // `as` saturates: a date past u64 seconds is the largest there is.
            Self::Fraction(s) if s.is_finite() && s >= 0.0 => Ok(s as u64),
            Self::Fraction(s) => Err(E::custom(format!("{s} is not a date"))),
        }
    }
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    NumericDate::deserialize(d)?.seconds()
}

fn optional_numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<NumericDate>::deserialize(d)?
        .map(NumericDate::seconds)
        .transpose()
}

/// A token's `aud`: a string or an array of strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "herald"`.
    One(String),
    /// `"aud": ["herald", "api"]`.
    Many(Vec<String>),
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Self::One(aud)
    }
}

/// See the module docs.
pub struct JwtAuthorizer {
    key: Option<(DecodingKey, Validation)>,
    cookie: Option<String>,
    anonymous: Vec<Pattern>,
    publish_keys: Vec<String>,
}

impl std::fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("JwtAuthorizer")
            .field("jwt", &self.key.as_ref().map(|(_, v)| &v.algorithms))
            .field("cookie", &self.cookie)
            .field("anonymous", &self.anonymous)
            .field("publish_keys", &self.publish_keys.len())
            .finish()
    }
}

/// The shortest HS256 secret the hub accepts (and `herald token` signs with).
pub const MIN_SECRET_LEN: usize = 16;

fn decoding_key(key: &JwtKey) -> Result<(DecodingKey, Algorithm), JwtSetupError> {
    match key {
        JwtKey::Secret(s) => {
            if s.len() < MIN_SECRET_LEN {
                return Err(JwtSetupError::BadKey(format!(
                    "an HS256 secret must be at least {MIN_SECRET_LEN} bytes"
                )));
            }
            Ok((DecodingKey::from_secret(s), Algorithm::HS256))
        }
        JwtKey::PublicKeyPem(pem) => DecodingKey::from_rsa_pem(pem)
            .map(|k| (k, Algorithm::RS256))
            .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
            .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (k, Algorithm::EdDSA)))
            .map_err(|e| {
                JwtSetupError::BadKey(format!("not an RSA, EC or Ed25519 public key in PEM: {e}"))
            }),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn query_token(parts: &Parts) -> Option<String> {
    form_urlencoded::parse(parts.uri.query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The names of a `crit` list for an error: at most 4, each cut to 32 characters.
fn shown_list(names: &[String]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(4)
        .map(|n| serde_json::to_string(&n.chars().take(32).collect::<String>()).unwrap_or_default())
        .collect();
    if names.len() > 4 {
        out.push("…".into());
    }
    format!("[{}]", out.join(", "))
}

/// RFC 6750 `b64token`: what `Authorization: Bearer` can carry.
fn is_b64token(key: &str) -> bool {
    let body = key.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// Compares without an early exit, so timing does not reveal a key's prefix.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl JwtAuthorizer {
    /// Builds the authorizer.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtSetupError> {
        let key = match &config.key {
            None => None,
            Some(k) => {
                let (key, alg) = decoding_key(k)?;
                let mut v = Validation::new(alg);
                v.leeway = LEEWAY_SECS;
                v.validate_nbf = true;
                // A configured audience or issuer must be in the token: without
                // these, a token that has none of the claim passes its check.
                let mut required = vec!["exp"];
                match &config.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                if let Some(iss) = &config.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                v.set_required_spec_claims(&required);
                Some((key, v))
            }
        };
        if config.publish_keys.iter().any(|k| k.len() < 16) {
            return Err(JwtSetupError::WeakPublishKey);
        }
        if !config.publish_keys.iter().all(|k| is_b64token(k)) {
            return Err(JwtSetupError::BadPublishKey);
        }
        let anonymous = config
            .anonymous_topics
            .iter()
            .map(|p| Pattern::parse(p, None))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            key,
            cookie: config.cookie.clone(),
            anonymous,
            publish_keys: config.publish_keys.clone(),
        })
    }

    /// Whether anything is guarded (a JWT key or a publish key).
    pub fn is_enabled(&self) -> bool {
        self.key.is_some() || !self.publish_keys.is_empty()
    }

    fn claims(&self, token: &str) -> Result<Claims, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::Unauthenticated(
                "tokens are not accepted by this hub".into(),
            ));
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Unauthenticated(format!("invalid token: {e}")))?;
        // RFC 7515 4.1.11: a token that lists extensions in `crit` must be refused
        // by a receiver that does not understand them, and this hub knows none.
        if let Some(crit) = &data.header.crit {
            return Err(AuthError::Unauthenticated(format!(
                "invalid token: critical header extensions {} are not understood by this hub",
                shown_list(crit)
            )));
        }
        Ok(data.claims)
    }

    fn decide(&self, claims: Option<&Claims>, patterns: &[String], topics: &[Topic]) -> Decision {
        let granted: Vec<Pattern> = claims
            .map(|c| {
                patterns
                    .iter()
                    .filter_map(|p| Pattern::parse(p, c.sub.as_deref()).ok())
                    .collect()
            })
            .unwrap_or_default();
        Decision {
            allowed: topics
                .iter()
                .map(|t| granted.iter().chain(&self.anonymous).any(|p| p.matches(t)))
                .collect(),
            // An `exp` past what the clock can hold (~year 292 billion) never
            // comes: no expiry, rather than an overflow.
            expires_at: claims.and_then(|c| {
                UNIX_EPOCH.checked_add(Duration::from_secs(c.exp.saturating_add(LEEWAY_SECS)))
            }),
        }
    }
}

impl Authorize for JwtAuthorizer {
    fn subscribe<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        let result = (|| {
            if self.key.is_none() {
                return Ok(Decision::allow_all(topics.len()));
            }
            let token = bearer(&request.headers)
                .map(str::to_owned)
                .or_else(|| {
                    self.cookie
                        .as_deref()
                        .and_then(|c| cookie(&request.headers, c))
                        .map(str::to_owned)
                })
                .or_else(|| query_token(request));
            match token {
                Some(t) => {
                    let claims = self.claims(&t)?;
                    Ok(self.decide(Some(&claims), &claims.herald.subscribe, topics))
                }
                None => {
                    let d = self.decide(None, &[], topics);
                    if d.allowed.iter().all(|&a| a) {
                        Ok(d)
                    } else {
                        Err(AuthError::Unauthenticated(
                            "a token is required for these topics (Authorization: Bearer, cookie, or access_token)".into(),
                        ))
                    }
                }
            }
        })();
        Box::pin(std::future::ready(result))
    }

    fn publish<'a>(
        &'a self,
        request: &'a Parts,
        topics: &'a [Topic],
    ) -> BoxFuture<'a, Result<Decision, AuthError>> {
        let result = (|| {
            if !self.is_enabled() {
                return Ok(Decision::allow_all(topics.len()));
            }
            let token = bearer(&request.headers).or_else(|| {
                self.cookie
                    .as_deref()
                    .and_then(|c| cookie(&request.headers, c))
            });
            let Some(token) = token else {
                return Err(AuthError::Unauthenticated(
                    "publishing needs a publish key or a token (Authorization: Bearer)".into(),
                ));
            };
            if self.publish_keys.iter().any(|k| same(k, token)) {
                return Ok(Decision::allow_all(topics.len()));
            }
            let claims = self.claims(token)?;
            let mut d = self.decide(Some(&claims), &claims.herald.publish, topics);
            // Anonymous topics are for subscribing only.
            d.allowed = topics
                .iter()
                .map(|t| {
                    claims
                        .herald
                        .publish
                        .iter()
                        .filter_map(|p| Pattern::parse(p, claims.sub.as_deref()).ok())
                        .any(|p| p.matches(t))
                })
                .collect();
            Ok(d)
        })();
        Box::pin(std::future::ready(result))
    }
}

/// Mints a token (for tests and `herald token`).
pub fn mint(key: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
