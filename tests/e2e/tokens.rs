//! Tokens for the demo IdP: valid ones from the committed demo key, and every kind of
//! bad one a client might present.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use lookergate_cli::{demo_signing_key, mint, public_key_pem, unix_now, TokenSpec, DEMO_KID};
use serde_json::{json, Value};

/// A demo user's claims, valid for ten minutes from now.
pub fn spec(user: &str) -> TokenSpec {
    TokenSpec::for_demo_user(user, 600).expect("demo user")
}

pub fn signed(spec: &TokenSpec) -> String {
    mint(&demo_signing_key().expect("demo key"), spec).expect("sign")
}

pub fn valid(user: &str) -> String {
    signed(&spec(user))
}

/// A token for `user` after `change` was applied to its claims.
pub fn with(user: &str, change: impl FnOnce(&mut TokenSpec)) -> String {
    let mut spec = spec(user);
    change(&mut spec);
    signed(&spec)
}

/// Expired well beyond the demo's 30s clock skew.
pub fn expired(user: &str) -> String {
    with(user, |s| {
        s.iat = unix_now() - 3600;
        s.exp = unix_now() - 300;
    })
}

/// `nbf` well beyond the clock skew in the future.
pub fn not_yet_valid(user: &str) -> String {
    with(user, |s| s.nbf = Some(unix_now() + 600))
}

/// Signed with the demo key, but naming a key id the issuer's JWKS does not have.
pub fn unknown_kid(user: &str) -> String {
    let key = demo_signing_key()
        .expect("demo key")
        .with_key_id("not-in-the-jwks");
    mint(&key, &spec(user)).expect("sign")
}

/// `user`'s valid token with `claims` merged into the payload, signature kept.
pub fn tampered(user: &str, claims: Value) -> String {
    let token = valid(user);
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    for (k, v) in claims.as_object().expect("object") {
        payload[k] = v.clone();
    }
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("json"));
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// `alg: none`, empty signature.
pub fn alg_none(user: &str) -> String {
    let token = valid(user);
    let payload = token.split('.').nth(1).expect("payload");
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": DEMO_KID}).to_string());
    format!("{header}.{payload}.")
}

/// The classic key-confusion attack: HS256 with the issuer's RSA public key (PEM) as the
/// HMAC secret.
pub fn hs256_with_rsa_public_key(user: &str) -> String {
    let pem = public_key_pem(&demo_signing_key().expect("demo key")).expect("public pem");
    let key = HS256Key::from_bytes(pem.as_bytes()).with_key_id(DEMO_KID);
    key.authenticate(spec(user).claims()).expect("hs256")
}

/// base64url (no padding) of `value`'s JSON.
pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// An RS256 signature with the demo key over `signing_input`, base64url.
pub fn rs256_signature(signing_input: &str) -> String {
    use superboring::hash::MessageDigest;
    use superboring::pkey::PKey;
    use superboring::sign::Signer;
    let key = demo_signing_key().expect("demo key");
    let pkey = PKey::from_rsa(key.key_pair().as_ref().clone()).expect("pkey");
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).expect("signer");
    signer
        .set_rsa_padding(superboring::rsa::Padding::PKCS1)
        .expect("padding");
    signer.update(signing_input.as_bytes()).expect("update");
    URL_SAFE_NO_PAD.encode(signer.sign_to_vec().expect("sign"))
}

/// A token with exactly this JOSE `header` and this payload text (base64url-encoded
/// as given), genuinely signed with the demo key: only the header makes it wrong.
pub fn signed_raw(header: &Value, payload_b64: &str) -> String {
    let input = format!("{}.{payload_b64}", b64_json(header));
    let signature = rs256_signature(&input);
    format!("{input}.{signature}")
}

/// The claims of `spec` as a JSON object (what the payload of [`signed`] holds).
pub fn claims_json(spec: &TokenSpec) -> Value {
    let token = signed(spec);
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

/// The demo header: `{"alg":"RS256","typ":"JWT","kid":"demo-2026"}`.
pub fn demo_header() -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": DEMO_KID})
}
