//! Issue 7's attack battery through the real Envoy: hostile tokens, misplaced and
//! duplicated credentials, spoofed gateway headers. Each refusal is checked for its
//! status and JSON error, and nothing may reach Looker or the broker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::*;
use lookergate_cli::{unix_now, DEMO_KID};
use serde_json::{json, Value};

use crate::harness::{connection_counter, Gateway, Reply};
use crate::{assert_nothing_reached_looker, header, tokens, DASHBOARD};

/// One hostile request and what the gateway must answer.
struct Attack {
    what: String,
    headers: Vec<(String, String)>,
    target: String,
    want: Want,
}

enum Want {
    /// 401 `invalid_token` whose reason starts with one of these codes.
    Invalid(&'static [&'static str]),
    /// 401 `missing_token`.
    Missing,
    /// 401 `invalid_token` `token_too_large`, or Envoy's 431 for headers past its limit.
    TooLarge,
}

fn bearer(what: &str, token: String, want: Want) -> Attack {
    Attack {
        what: what.to_owned(),
        headers: vec![("authorization".to_owned(), format!("Bearer {token}"))],
        target: DASHBOARD.to_owned(),
        want,
    }
}

fn with_headers(what: &str, headers: &[(&str, String)], target: &str, want: Want) -> Attack {
    Attack {
        what: what.to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
        target: target.to_owned(),
        want,
    }
}

fn alice_claims() -> Value {
    tokens::claims_json(&tokens::spec("alice"))
}

fn attacker_key() -> RS256KeyPair {
    RS256KeyPair::generate(2048)
        .expect("attacker key")
        .with_key_id(DEMO_KID)
}

/// Re-encodes every part of `token` with another base64 alphabet/padding.
fn reencoded(token: &str, engine: &impl Engine) -> String {
    token
        .split('.')
        .map(|part| engine.encode(URL_SAFE_NO_PAD.decode(part).expect("base64url part")))
        .collect::<Vec<_>>()
        .join(".")
}

const BAD_SIGNATURE_OR_MALFORMED: &[&str] = &["bad_signature", "malformed_token"];

fn battery() -> Vec<Attack> {
    let alice = tokens::valid("alice");
    let claims = alice_claims();
    let payload = tokens::b64_json(&claims);
    let mut attacks = Vec::new();

    // alg: none in every casing, with and without the original signature.
    for alg in ["none", "None", "NONE", "nOnE", "nonE"] {
        let header = tokens::b64_json(&json!({"alg": alg, "typ": "JWT", "kid": DEMO_KID}));
        attacks.push(bearer(
            &format!("alg {alg}, empty signature"),
            format!("{header}.{payload}."),
            Want::Invalid(&["alg_not_allowed", "malformed_token"]),
        ));
        let signature = alice.rsplit('.').next().unwrap();
        attacks.push(bearer(
            &format!("alg {alg}, a real signature kept"),
            format!("{header}.{payload}.{signature}"),
            Want::Invalid(&["alg_not_allowed", "malformed_token"]),
        ));
    }
    for alg in ["rs256", "Rs256", "RS256 ", "HS256", "ES256", "PS256"] {
        let mut header = tokens::demo_header();
        header["alg"] = json!(alg);
        attacks.push(bearer(
            &format!("alg {alg:?} signed as RS256"),
            tokens::signed_raw(&header, &payload),
            Want::Invalid(&["alg_not_allowed", "alg_key_mismatch", "bad_signature"]),
        ));
    }
    attacks.push(bearer(
        "HS256 keyed with the RSA public key",
        tokens::hs256_with_rsa_public_key("alice"),
        Want::Invalid(&["alg_not_allowed"]),
    ));

    // kid: path traversal, SQL, very long, wrong types.
    for kid in [
        "../../../../../../etc/passwd".to_owned(),
        "/dev/zero".to_owned(),
        "demo-2026/../demo-2026".to_owned(),
        "' OR '1'='1' --".to_owned(),
        "demo-2026' UNION SELECT key FROM keys --".to_owned(),
        "k".repeat(4000),
        "demo-2026\u{0}".to_owned(),
    ] {
        let mut header = tokens::demo_header();
        header["kid"] = json!(kid);
        let shown: String = kid.chars().take(40).collect();
        attacks.push(bearer(
            &format!("kid {shown:?} ({} bytes)", kid.len()),
            tokens::signed_raw(&header, &payload),
            Want::Invalid(&["unknown_kid"]),
        ));
    }
    // (`"kid": null` reads as no kid: with a single key in the JWKS a genuine token is
    // then accepted, which is no bypass: the signature is still checked.)
    for kid in [
        json!(2026),
        json!(["demo-2026"]),
        json!({"kid": "demo-2026"}),
    ] {
        let mut header = tokens::demo_header();
        header["kid"] = kid.clone();
        attacks.push(bearer(
            &format!("kid {kid}"),
            tokens::signed_raw(&header, &payload),
            Want::Invalid(&["malformed_token", "kid_required"]),
        ));
    }

    // An embedded key (jwk) of the attacker's, who signed with it.
    let evil = attacker_key();
    let evil_jwk: Value = serde_json::from_str(&evil.public_key().to_jwk()).expect("jwk");
    let evil_token = evil.sign(tokens::spec("alice").claims()).expect("sign");
    let mut header = tokens::demo_header();
    header["jwk"] = evil_jwk;
    let evil_parts: Vec<&str> = evil_token.split('.').collect();
    let input = format!("{}.{}", tokens::b64_json(&header), evil_parts[1]);
    // Signed with the attacker's key: a consistent forgery if the embedded key were used.
    let signature = forged_signature(&evil, &input);
    attacks.push(bearer(
        "embedded jwk of the attacker's key",
        format!("{input}.{signature}"),
        Want::Invalid(BAD_SIGNATURE_OR_MALFORMED),
    ));
    attacks.push(bearer(
        "signed by the attacker with the demo kid",
        evil_token,
        Want::Invalid(&["bad_signature"]),
    ));

    // crit with extensions nobody understands.
    let mut header = tokens::demo_header();
    header["crit"] = json!(["x-lookergate-trust-me"]);
    header["x-lookergate-trust-me"] = json!(true);
    attacks.push(bearer(
        "crit unknown",
        tokens::signed_raw(&header, &payload),
        Want::Invalid(&["crit_unsupported"]),
    ));
    let mut header = tokens::demo_header();
    header["crit"] = json!(["exp"]);
    attacks.push(bearer(
        "crit naming a claim",
        tokens::signed_raw(&header, &payload),
        Want::Invalid(&["crit_unsupported"]),
    ));

    // Signature stripped or mangled.
    let (signing_input, _) = alice.rsplit_once('.').unwrap();
    attacks.push(bearer(
        "signature stripped",
        format!("{signing_input}."),
        Want::Invalid(BAD_SIGNATURE_OR_MALFORMED),
    ));
    attacks.push(bearer(
        "signature part removed",
        signing_input.to_owned(),
        Want::Invalid(&["malformed_token"]),
    ));
    attacks.push(bearer(
        "four parts",
        format!("{alice}.{}", alice.rsplit('.').next().unwrap()),
        Want::Invalid(&["malformed_token"]),
    ));
    attacks.push(bearer(
        "signature truncated",
        alice[..alice.len() - 4].to_owned(),
        Want::Invalid(BAD_SIGNATURE_OR_MALFORMED),
    ));

    // The same token re-encoded: padding, standard alphabet.
    for (name, token) in [
        ("base64url with padding", reencoded(&alice, &URL_SAFE)),
        ("standard base64 with padding", reencoded(&alice, &STANDARD)),
        (
            "standard base64 without padding",
            reencoded(&alice, &STANDARD_NO_PAD),
        ),
    ] {
        if token != alice {
            attacks.push(bearer(
                &format!("re-encoded: {name}"),
                token,
                Want::Invalid(BAD_SIGNATURE_OR_MALFORMED),
            ));
        }
    }
    // Base64 pads only a length that is not a multiple of 3: make sure this one is padded
    // (the demo users' claims change length as claims are added).
    let mut padded_claims = claims.clone();
    if claims.to_string().len().is_multiple_of(3) {
        padded_claims["pad"] = json!("x");
    }
    let padded_payload = URL_SAFE.encode(padded_claims.to_string());
    assert!(padded_payload.ends_with('='), "{padded_payload}");
    attacks.push(bearer(
        "padded payload, signed as such",
        tokens::signed_raw(&tokens::demo_header(), &padded_payload),
        Want::Invalid(&["malformed_token"]),
    ));

    // Nested JWT: the payload is itself a (valid) JWT, not claims.
    let mut header = tokens::demo_header();
    header["cty"] = json!("JWT");
    attacks.push(bearer(
        "nested JWT around a valid token",
        tokens::signed_raw(&header, &URL_SAFE_NO_PAD.encode(&alice)),
        Want::Invalid(&["malformed_token", "invalid_claim"]),
    ));
    let none_inner = format!("{}.{payload}.", tokens::b64_json(&json!({"alg": "none"})));
    attacks.push(bearer(
        "nested JWT around an alg:none token",
        tokens::signed_raw(&header, &URL_SAFE_NO_PAD.encode(none_inner)),
        Want::Invalid(&["malformed_token", "invalid_claim"]),
    ));

    // Time and audience.
    let now = unix_now();
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 600);
    expired["exp"] = json!(now - 31); // the demo's skew is 30 s
    attacks.push(bearer(
        "expired 1 s beyond the skew",
        tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&expired)),
        Want::Invalid(&["token_expired"]),
    ));
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    attacks.push(bearer(
        "no exp",
        tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&no_exp)),
        Want::Invalid(&["missing_exp"]),
    ));
    let mut aud = claims.clone();
    aud["aud"] = json!(["other-api", "looker-api-staging", "LOOKER-API"]);
    attacks.push(bearer(
        "aud array without a match",
        tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&aud)),
        Want::Invalid(&["wrong_audience"]),
    ));
    aud["aud"] = json!([]);
    attacks.push(bearer(
        "aud empty array",
        tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&aud)),
        Want::Invalid(&["wrong_audience"]),
    ));

    // Sizes: just over the 8 KiB limit, and 64 KiB.
    for (name, pad) in [("8 KiB", 8 * 1024), ("64 KiB", 64 * 1024)] {
        let mut big = claims.clone();
        big["pad"] = json!("x".repeat(pad));
        attacks.push(bearer(
            &format!("{name} token"),
            tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&big)),
            Want::TooLarge,
        ));
    }

    // Where and how the token is presented.
    let eve = tokens::valid("eve");
    attacks.push(with_headers(
        "two tokens in one header",
        &[("authorization", format!("Bearer {alice}, Bearer {eve}"))],
        DASHBOARD,
        Want::Invalid(&["multiple_tokens"]),
    ));
    attacks.push(with_headers(
        "token only in a cookie",
        &[("cookie", format!("access_token={alice}; token={alice}"))],
        DASHBOARD,
        Want::Missing,
    ));
    attacks.push(with_headers(
        "token only in the query",
        &[],
        &format!("{DASHBOARD}?access_token={alice}"),
        Want::Missing,
    ));
    attacks.push(with_headers(
        "token only in x-access-token",
        &[("x-access-token", alice.clone())],
        DASHBOARD,
        Want::Missing,
    ));
    attacks.push(with_headers(
        "Looker's scheme: Authorization: token <jwt>",
        &[("authorization", format!("token {alice}"))],
        DASHBOARD,
        Want::Invalid(&["unsupported_scheme"]),
    ));
    attacks.push(with_headers(
        "Basic credentials",
        &[(
            "authorization",
            format!("Basic {}", STANDARD.encode("alice:password")),
        )],
        DASHBOARD,
        Want::Invalid(&["unsupported_scheme"]),
    ));
    attacks.push(with_headers(
        "Bearer without a space",
        &[("authorization", format!("Bearer{alice}"))],
        DASHBOARD,
        Want::Invalid(&["unsupported_scheme"]),
    ));
    attacks.push(with_headers(
        "Bearer and nothing else",
        &[("authorization", "Bearer".to_owned())],
        DASHBOARD,
        Want::Invalid(&["unsupported_scheme", "malformed_token"]),
    ));
    attacks.push(with_headers(
        "spoofed gateway headers and no token",
        &[
            ("x-lookergate-identity", "role:analyst".to_owned()),
            ("x-lookergate-subject", "alice".to_owned()),
            ("x-lookergate-verdict", "allow".to_owned()),
        ],
        DASHBOARD,
        Want::Missing,
    ));
    attacks
}

/// An RS256 signature with `key` over `input`, as a forger would make it.
fn forged_signature(key: &RS256KeyPair, input: &str) -> String {
    use superboring::hash::MessageDigest;
    use superboring::pkey::PKey;
    use superboring::sign::Signer;
    let pkey = PKey::from_rsa(key.key_pair().as_ref().clone()).expect("pkey");
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).expect("signer");
    signer
        .set_rsa_padding(superboring::rsa::Padding::PKCS1)
        .expect("padding");
    signer.update(input.as_bytes()).expect("update");
    URL_SAFE_NO_PAD.encode(signer.sign_to_vec().expect("sign"))
}

fn check(attack: &Attack, reply: &Reply) -> Result<(), String> {
    let got = || {
        format!(
            "got {} {}",
            reply.status,
            reply.body.chars().take(300).collect::<String>()
        )
    };
    if matches!(attack.want, Want::TooLarge) && reply.status == 431 {
        return Ok(()); // Envoy's own header limit (60 KiB by default) came first
    }
    if reply.status != 401 {
        return Err(format!("want 401, {}", got()));
    }
    let body: Value =
        serde_json::from_str(&reply.body).map_err(|_| format!("not JSON: {}", got()))?;
    if !reply
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json")
        || matches!(body["request_id"].as_str(), None | Some(""))
    {
        return Err(format!("not the gateway's JSON error: {}", got()));
    }
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    if !challenge.starts_with(r#"Bearer realm="lookergate""#) {
        return Err(format!("WWW-Authenticate {challenge:?}"));
    }
    let reason = body["reason"].as_str().unwrap_or_default();
    match attack.want {
        Want::Missing if body["error"] == "missing_token" => Ok(()),
        Want::Missing => Err(format!("want missing_token, {}", got())),
        Want::Invalid(codes)
            if body["error"] == "invalid_token" && codes.iter().any(|c| reason.starts_with(c)) =>
        {
            challenge
                .contains(r#"error="invalid_token""#)
                .then_some(())
                .ok_or_else(|| format!("WWW-Authenticate lacks error=invalid_token: {challenge:?}"))
        }
        Want::Invalid(codes) => Err(format!("want invalid_token {codes:?}, {}", got())),
        Want::TooLarge
            if body["error"] == "invalid_token" && reason.starts_with("token_too_large") =>
        {
            Ok(())
        }
        Want::TooLarge => Err(format!("want token_too_large or 431, {}", got())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_battery_every_hostile_token_is_refused_and_nothing_leaks() {
    let gw = Gateway::start().await;
    let attacks = battery();
    let mut failures = Vec::new();
    let mut replies = Vec::new();
    for attack in &attacks {
        let headers: Vec<(&str, &str)> = attack
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let reply = gw.send_raw("GET", &attack.target, &headers).await;
        if let Err(why) = check(attack, &reply) {
            failures.push(format!("{}: {why}", attack.what));
        }
        if let Some(reason) = reply.body.find("eyJ") {
            failures.push(format!(
                "{}: the reply echoes a token at {reason}: {}",
                attack.what, reply.body
            ));
        }
        replies.push(reply);
    }
    assert!(
        failures.is_empty(),
        "{} of {} attacks were not refused as expected:\n{}",
        failures.len(),
        attacks.len(),
        failures.join("\n")
    );
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(
        gw.broker_calls().await,
        0,
        "no broker call for a refused token"
    );
}

/// Envoy's HTTP/1 codec folds repeated `authorization` headers into one value
/// (`Bearer A,Bearer B`); the filter reads a ',' in the token header as `multiple_tokens`
/// (a JWT has none). Found here: it answered `malformed_token` before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_authorization_headers_are_refused_as_multiple_tokens() {
    let gw = Gateway::start().await;
    let alice = format!("Bearer {}", tokens::valid("alice"));
    let eve = format!("Bearer {}", tokens::valid("eve"));
    let mut failures = Vec::new();
    for (what, first, second) in [
        ("alice then eve", &alice, &eve),
        ("eve then alice", &eve, &alice),
        ("the same token twice", &alice, &alice),
    ] {
        let attack = with_headers(what, &[], DASHBOARD, Want::Invalid(&["multiple_tokens"]));
        let reply = gw
            .send_raw(
                "GET",
                DASHBOARD,
                &[
                    ("authorization", first.as_str()),
                    ("authorization", second.as_str()),
                ],
            )
            .await;
        if let Err(why) = check(&attack, &reply) {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert_nothing_reached_looker(&gw).await;
    assert_eq!(gw.broker_calls().await, 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive_and_tolerates_whitespace() {
    let gw = Gateway::start().await;
    let alice = tokens::valid("alice");
    let claims = alice_claims();
    let mut aud = claims.clone();
    aud["aud"] = json!(["other-api", "looker-api"]);
    let aud_array = tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&aud));
    let mut late = claims.clone();
    late["exp"] = json!(unix_now() - 10); // expired, but within the 30 s skew
    let within_skew = tokens::signed_raw(&tokens::demo_header(), &tokens::b64_json(&late));
    let accepted = [
        ("bearer", format!("bearer {alice}")),
        ("BEARER", format!("BEARER {alice}")),
        ("bEaReR", format!("bEaReR {alice}")),
        ("several spaces", format!("Bearer    {alice}")),
        ("a tab", format!("Bearer\t{alice}")),
        ("trailing whitespace", format!("Bearer {alice}   ")),
        ("aud array with a match", format!("Bearer {aud_array}")),
        ("expired within the skew", format!("Bearer {within_skew}")),
    ];
    for (what, value) in &accepted {
        let reply = gw
            .send_raw("GET", DASHBOARD, &[("authorization", value)])
            .await;
        assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    }
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), accepted.len());
    let analyst = format!("token {}", gw.broker_token("analyst").await);
    for request in &seen {
        assert_eq!(header(request, "authorization"), Some(analyst.as_str()));
        assert!(
            !request.to_string().contains("eyJ"),
            "a JWT reached Looker: {request}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jku_x5u_and_jwk_headers_are_never_fetched() {
    let (listener, connections, stop) = connection_counter().await;
    let gw = Gateway::start().await;
    let here = format!("http://{listener}/.well-known/jwks.json");
    let claims = tokens::b64_json(&alice_claims());

    // Genuinely signed with the demo key, pointing elsewhere: the pointers are ignored.
    let mut header = tokens::demo_header();
    header["jku"] = json!(here);
    header["x5u"] = json!(here);
    let genuine = tokens::signed_raw(&header, &claims);
    let reply = gw.get(DASHBOARD, Some(&genuine)).await;
    assert_eq!(
        reply.status, 200,
        "a genuine token with ignored jku/x5u: {}",
        reply.body
    );

    // Signed by an attacker whose key "is" at jku/x5u.
    let evil = attacker_key();
    for kid in [DEMO_KID, "attacker-1"] {
        let mut header = tokens::demo_header();
        header["kid"] = json!(kid);
        header["jku"] = json!(here);
        header["x5u"] = json!(here);
        let input = format!("{}.{claims}", tokens::b64_json(&header));
        let forged = format!("{input}.{}", forged_signature(&evil, &input));
        let reply = gw.get(DASHBOARD, Some(&forged)).await;
        assert_eq!(
            reply.status, 401,
            "forged with jku, kid {kid}: {}",
            reply.body
        );
        let body = reply.json();
        let want = if kid == DEMO_KID {
            "bad_signature"
        } else {
            "unknown_kid"
        };
        assert!(body["reason"].as_str().unwrap().starts_with(want), "{body}");
    }
    // And with the attacker's key embedded as jwk, plus jku.
    let mut header = tokens::demo_header();
    header["jwk"] = serde_json::from_str(&evil.public_key().to_jwk()).unwrap();
    header["jku"] = json!(here);
    let input = format!("{}.{claims}", tokens::b64_json(&header));
    let forged = format!("{input}.{}", forged_signature(&evil, &input));
    let reply = gw.get(DASHBOARD, Some(&forged)).await;
    assert_eq!(reply.status, 401, "forged with jwk: {}", reply.body);

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.abort();
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the gateway contacted the URL a token's header named"
    );
    assert_eq!(
        gw.forwarded_requests().await.len(),
        1,
        "only the genuine token was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_gateway_headers_and_client_looker_tokens_are_never_forwarded() {
    let gw = Gateway::start().await;
    let looker_token = gw.broker_token("analyst").await;
    // A client holding a real Looker token tries to use it directly through the gateway.
    for value in [
        format!("token {looker_token}"),
        format!("Bearer {looker_token}"),
    ] {
        let reply = gw
            .send_raw("GET", DASHBOARD, &[("authorization", &value)])
            .await;
        assert_eq!(reply.status, 401, "{value:.12}…: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_token", "{}", reply.body);
        assert!(
            !reply.body.contains(&looker_token),
            "the reply echoes the token"
        );
    }
    // eve claims to be allowed through gateway-owned headers.
    let eve = format!("Bearer {}", tokens::valid("eve"));
    let spoofed = [
        ("authorization", eve.as_str()),
        ("x-lookergate-identity", "role:analyst"),
        ("x-lookergate-rule", "analysts-read"),
        ("x-lookergate-subject", "alice"),
        ("x-lookergate-verdict", "allow"),
    ];
    let reply = gw.send_raw("GET", DASHBOARD, &spoofed).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply.json()["reason"]
            .as_str()
            .unwrap()
            .contains("default_deny"),
        "{}",
        reply.body
    );
    assert_nothing_reached_looker(&gw).await;

    // alice's allowed request: the spoofed headers are stripped, not passed on.
    let alice = format!("Bearer {}", tokens::valid("alice"));
    let mut headers = spoofed.to_vec();
    headers[0] = ("authorization", alice.as_str());
    headers.push(("x-lookergate-looker-token", "token stolen"));
    let reply = gw.send_raw("GET", DASHBOARD, &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = gw.forwarded_requests().await;
    assert_eq!(seen.len(), 1);
    let forwarded = seen[0]["headers"].as_object().unwrap();
    for (name, value) in &headers[1..] {
        assert_ne!(
            forwarded.get(*name).and_then(Value::as_str),
            Some(*value),
            "client's {name} reached Looker: {forwarded:#?}"
        );
    }
    assert_eq!(
        header(&seen[0], "authorization"),
        Some(format!("token {looker_token}").as_str())
    );
}
