// The embed demo in a real headless Chromium (issue 15 item 6), against the demo stack
// that tests/browser/run.sh starts (envoy/run-demo.sh: Envoy, broker, simulator, dev IdP
// serving web/embed-demo at /app/). For alice and bob: sign in on the demo page, check
// the page's own API call through the gateway (CORS), wait for the embedded dashboard
// and its rows (alice: west only, bob: east only), stay past the embed token TTL and
// check the session refreshed its tokens and still loads rows. Then: a stolen embed
// session is useless to another user, Looker's own embed operations are refused through
// the API path, logout ends the session, and no Looker secret, API3 key, Looker access
// token or session reference token appears in any response the browser received.
//
// Environment: LOOKERGATE_EMBED_TOKEN_TTL (seconds, as given to the simulator),
// LOOKERGATE_BIN_DIR (for the broker's demo config), CHROMIUM (default /usr/bin/chromium),
// UPDATE_SCREENSHOT=1 to write docs/embed-demo.png.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { get as httpGet } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const APP = 'http://127.0.0.1:10070/app/';
const APP_ORIGIN = 'http://127.0.0.1:10070';
const IDP = 'http://127.0.0.1:10070';
const GATEWAY = 'http://127.0.0.1:10000';
const SIM = 'http://127.0.0.1:10080';
const TOKEN_TTL_SECS = Number(process.env.LOOKERGATE_EMBED_TOKEN_TTL || 15);
const BIN_DIR = resolve(ROOT, process.env.LOOKERGATE_BIN_DIR || 'target/debug');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const USERS = { alice: 'west', bob: 'east' };
const LOAD_TIMEOUT_MS = 30_000;
// Past one token lifetime, with room for the SDK to ask before expiry and the page to
// redraw.
const REFRESH_TIMEOUT_MS = (2 * TOKEN_TTL_SECS + 20) * 1000;

const log = (...args) => console.log('[browser-test]', ...args);

// ---- what the browser received --------------------------------------------------------

/** Every response any page or frame of the browser received: url, status, headers, body. */
const responses = [];
const pendingBodies = [];

function capture(context, who) {
  context.on('response', (response) => {
    const entry = {
      who,
      url: response.url(),
      method: response.request().method(),
      status: response.status(),
      headers: response.headers(),
      body: null,
    };
    responses.push(entry);
    const type = entry.headers['content-type'] || '';
    if (/json|html|javascript|text/.test(type) || type === '') {
      pendingBodies.push(
        response
          .text()
          .then((text) => {
            entry.body = text;
          })
          // Redirects and aborted loads have no body to read.
          .catch(() => {}),
      );
    }
  });
}

async function allResponses() {
  await Promise.all(pendingBodies);
  return responses;
}

// ---- the server side, read for the assertions -----------------------------------------

async function json(url, init) {
  const response = await fetch(url, init);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: response.status, body, text };
}

/** GET from the simulator: node's fetch refuses its port, 10080 (a "bad port" of the
 *  Fetch standard), so plain node:http. */
function simJson(path) {
  return new Promise((resolvePromise, reject) => {
    httpGet(`${SIM}${path}`, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => {
        text += chunk;
      });
      response.on('end', () => {
        let body = null;
        try {
          body = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolvePromise({ status: response.statusCode, body, text });
      });
    }).on('error', reject);
  });
}

async function idpToken(user) {
  const { status, body } = await json(`${IDP}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  assert.equal(status, 200, `IdP token for ${user}`);
  return body.access_token;
}

/** The demo's Looker secrets: every secret value in the broker's demo config (API3
 *  client secrets, the gateway credential, the embed secret if any). */
function demoSecrets() {
  const config = execFileSync(join(BIN_DIR, 'lookergate-broker'), ['print-demo-config'], {
    encoding: 'utf8',
  });
  const secrets = new Set();
  for (const m of config.matchAll(/^\s*\w*secret\w*\s*=\s*"([^"]+)"/gim)) secrets.add(m[1]);
  for (const m of config.matchAll(/"([^"\s]*secret[^"\s]*)"/gi)) secrets.add(m[1]);
  // Not ids (`secret_id = "1"`): values long enough to be secrets.
  const values = [...secrets].filter((v) => v.length >= 8);
  assert.ok(values.length >= 4, `too few secrets found in the broker's demo config: ${values}`);
  return values;
}

/** What the simulator (Looker) saw in API calls: the Looker access tokens
 *  (`Authorization: token X`: the broker's, for the API path and its embed calls) and
 *  the session reference tokens in the paths of `delete_embed_cookieless_session`
 *  (Looker's URL holds it; the broker's logout). */
async function lookerSideTokens() {
  const { status, body } = await simJson('/__sim/requests');
  assert.equal(status, 200, 'GET /__sim/requests');
  const access = new Set();
  const references = new Set();
  for (const request of body) {
    const authorization = request?.headers?.authorization;
    const m = typeof authorization === 'string' && authorization.match(/^token\s+(\S+)$/i);
    if (m) access.add(m[1]);
    const r = typeof request?.path === 'string' && request.path.match(/^\/api\/4\.0\/embed\/cookieless_session\/([^/]+)$/);
    if (r && request.method === 'DELETE') references.add(decodeURIComponent(r[1]));
  }
  return { access: [...access], references: [...references] };
}

/** The fingerprints (first 8 hex of SHA-256, `lookergate_proto::fingerprint`) of every
 *  session reference token the simulator holds (GET /__sim/embed shows no more). */
async function referenceFingerprints() {
  const { status, body, text } = await simJson('/__sim/embed');
  assert.equal(status, 200, `GET /__sim/embed: ${text.slice(0, 200)}`);
  const sessions = body.sessions || [];
  return sessions.map((s) => s.session_reference_token_fingerprint).filter((f) => typeof f === 'string' && f.length > 0);
}

const fingerprint = (text) => createHash('sha256').update(text).digest('hex').slice(0, 8);

// ---- the page -------------------------------------------------------------------------

async function signIn(browser, user) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true, // the demo's self-signed certificate on :10443
    viewport: { width: 1200, height: 900 },
  });
  capture(context, user);
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') log(`${user} console: ${message.text()}`);
  });
  page.on('pageerror', (error) => log(`${user} page error: ${error.message}`));
  await page.goto(APP);
  await page.click(`#login-${user}`);

  // The page's own API call through the gateway (CORS, Bearer IdP token).
  await page.locator('#api-status[data-state="ok"], #api-status[data-state="error"]').waitFor({
    timeout: LOAD_TIMEOUT_MS,
  });
  const apiStatus = await page.locator('#api-status').innerText();
  assert.equal(await page.locator('#api-status').getAttribute('data-state'), 'ok', `${user}: ${apiStatus}`);
  assert.match(apiStatus, /^200 /, `${user}: page's API call`);

  const frame = page.frameLocator('#dashboard iframe');
  await frame.locator('#lookergate-embed-user').waitFor({ timeout: LOAD_TIMEOUT_MS });
  await frame.locator('table#lookergate-embed-rows tr:has(td)').first().waitFor({ timeout: LOAD_TIMEOUT_MS });
  return { user, context, page, frame };
}

async function dashboard(session) {
  const { frame } = session;
  // One <tr> per order (cells: order id, status, state, region); headings are elsewhere.
  const rows = frame.locator('table#lookergate-embed-rows tr:has(td)');
  const cells = [];
  for (const row of await rows.all()) cells.push((await row.locator('td').allInnerTexts()).map((c) => c.trim()));
  return {
    user: (await frame.locator('#lookergate-embed-user').innerText()).trim(),
    region: (await frame.locator('#lookergate-embed-region').innerText()).trim(),
    token: (await frame.locator('#lookergate-embed-token').innerText()).trim(),
    refreshes: Number((await frame.locator('#lookergate-embed-refreshes').innerText()).trim()),
    status: (await frame.locator('#lookergate-embed-status').innerText()).trim(),
    cells,
  };
}

function assertOnlyRegion(user, view, region) {
  assert.ok(view.cells.length > 0, `${user}: no rows`);
  assert.equal(view.region.toLowerCase(), region, `${user}: region shown`);
  const others = Object.values(USERS).filter((r) => r !== region);
  for (const row of view.cells) {
    const lower = row.map((c) => c.toLowerCase());
    assert.ok(lower.includes(region), `${user}: row ${JSON.stringify(row)} is not in ${region}`);
    for (const other of others) assert.ok(!lower.includes(other), `${user} sees a ${other} row: ${JSON.stringify(row)}`);
  }
}

async function waitForRefresh(session, before) {
  const deadline = Date.now() + REFRESH_TIMEOUT_MS;
  for (;;) {
    const view = await dashboard(session);
    if (view.refreshes >= 1 && view.token !== before.token && /ok/i.test(view.status)) return view;
    assert.ok(
      Date.now() < deadline,
      `${session.user}: no token refresh within ${REFRESH_TIMEOUT_MS} ms: ${JSON.stringify(view)}`,
    );
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The embed tokens the gateway last gave `user`'s browser (acquire / generate_tokens). */
function lastEmbedTokens(user) {
  const answers = responses.filter(
    (r) => r.who === user && r.status === 200 && /\/lookergate\/embed\/(acquire|generate_tokens)$/.test(new URL(r.url).pathname) && r.body,
  );
  assert.ok(answers.length > 0, `${user}: the browser received no embed tokens from the gateway`);
  return JSON.parse(answers[answers.length - 1].body);
}

// ---- the test -------------------------------------------------------------------------

async function main() {
  // launch() runs Chromium with a fresh, temporary user-data-dir of its own (it refuses
  // --user-data-dir in args); each user gets a fresh context in it.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    // 1. Both users signed in side by side; each sees only their region's rows.
    const sessions = {};
    const first = {};
    for (const [user, region] of Object.entries(USERS)) {
      sessions[user] = await signIn(browser, user);
      first[user] = await dashboard(sessions[user]);
      log(`${user}: ${first[user].cells.length} rows, region ${first[user].region}, status ${first[user].status}`);
      assert.ok(first[user].user.length > 0, `${user}: no embed user shown`);
      assertOnlyRegion(user, first[user], region);
      if (user === 'alice' && process.env.UPDATE_SCREENSHOT === '1') {
        await sessions.alice.page.screenshot({ path: join(ROOT, 'docs/embed-demo.png'), fullPage: true });
        log('wrote docs/embed-demo.png');
      }
    }
    assert.notEqual(first.alice.user, first.bob.user, 'alice and bob are the same embed user');
    const rowSet = (view) => new Set(view.cells.map((c) => JSON.stringify(c)));
    const [aliceRows, bobRows] = [rowSet(first.alice), rowSet(first.bob)];
    assert.ok(
      [...aliceRows].every((r) => !bobRows.has(r)) && [...bobRows].every((r) => !aliceRows.has(r)),
      'alice and bob share rows',
    );

    // 2. The page's API call went through CORS: the browser got the allow-origin.
    for (const user of Object.keys(USERS)) {
      const api = responses.find((r) => r.who === user && r.url === `${GATEWAY}/api/4.0/user` && r.method === 'GET');
      assert.ok(api, `${user}: no GET /api/4.0/user in the browser's responses`);
      assert.equal(api.status, 200, `${user}: GET /api/4.0/user`);
      assert.equal(api.headers['access-control-allow-origin'], APP_ORIGIN, `${user}: CORS`);
    }

    // 3. Past the token TTL: the SDK asked the gateway for new tokens; rows still load.
    log(`waiting past the embed token TTL (${TOKEN_TTL_SECS} s) ...`);
    for (const [user, region] of Object.entries(USERS)) {
      const after = await waitForRefresh(sessions[user], first[user]);
      log(`${user}: ${after.refreshes} refresh(es), status ${after.status}`);
      assert.ok(after.refreshes >= 1, `${user}: refreshes`);
      assert.notEqual(after.token, first[user].token, `${user}: the token did not change`);
      assertOnlyRegion(user, after, region);
    }
    const refreshCalls = responses.filter((r) => r.url === `${GATEWAY}/lookergate/embed/generate_tokens` && r.method === 'PUT');
    assert.ok(refreshCalls.length >= 1, 'the SDK never called the gateway generate_tokens');
    for (const call of refreshCalls) assert.equal(call.status, 200, `generate_tokens for ${call.who}`);

    // 4. A stolen session is useless. (a) bob presents alice's embed tokens to the
    // gateway: he gets no token of alice's session.
    const bobToken = await idpToken('bob');
    const aliceToken = await idpToken('alice');
    const alices = lastEmbedTokens('alice');
    const stolen = await json(`${GATEWAY}/lookergate/embed/generate_tokens`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${bobToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ api_token: alices.api_token, navigation_token: alices.navigation_token }),
    });
    log(`bob with alice's embed tokens: ${stolen.status} ${stolen.text.slice(0, 160)}`);
    // Looker refuses alice's tokens for bob's session: the gateway answers an error, or
    // (the broker then ends bob's own session) 200 with no tokens and TTL 0.
    if (stolen.status === 200) {
      assert.notEqual(stolen.body.api_token, alices.api_token, "bob got alice's api token back");
      assert.notEqual(stolen.body.navigation_token, alices.navigation_token, "bob got alice's navigation token back");
    } else {
      assert.ok(stolen.status >= 400 && stolen.status < 500, `bob with alice's tokens: ${stolen.status}`);
    }
    // alice's own session survived the attempt.
    const aliceAfter = await dashboard(sessions.alice);
    assert.match(aliceAfter.status, /^ok/i, `alice after bob's attempt: ${aliceAfter.status}`);

    // 5. Logout ends alice's session: her last tokens no longer refresh.
    await sessions.alice.page.click('#logout');
    await sessions.alice.page
      .locator('#logout-status[data-state="ok"], #logout-status[data-state="error"]')
      .waitFor({ timeout: LOAD_TIMEOUT_MS });
    const logoutStatus = await sessions.alice.page.locator('#logout-status').innerText();
    assert.equal(await sessions.alice.page.locator('#logout-status').getAttribute('data-state'), 'ok', `logout: ${logoutStatus}`);
    const afterLogout = await json(`${GATEWAY}/lookergate/embed/generate_tokens`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${aliceToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ api_token: alices.api_token, navigation_token: alices.navigation_token }),
    });
    log(`alice's tokens after logout: ${afterLogout.status} ${afterLogout.text.slice(0, 160)}`);
    assert.ok(
      (afterLogout.status >= 400 && afterLogout.status < 500) || afterLogout.body?.session_reference_token_ttl === 0,
      `generate_tokens after logout: ${afterLogout.status} ${afterLogout.text}`,
    );

    // 6. A session reference token, read where the server side has it (Looker's
    // delete_embed_cookieless_session URL holds it: the simulator saw the broker's
    // logout), taken to Looker's own embed endpoints through the gateway: refused, they
    // are gateway-owned operations, for bob as for alice.
    const lookerSide = await lookerSideTokens();
    assert.ok(lookerSide.references.length >= 1, "the simulator saw no delete_embed_cookieless_session (alice's logout)");
    const reference = lookerSide.references[0];
    for (const [who, token] of [['bob', bobToken], ['alice', aliceToken]]) {
      for (const [method, path, body] of [
        ['PUT', '/api/4.0/embed/cookieless_session/generate_tokens', {
          session_reference_token: reference, api_token: alices.api_token, navigation_token: alices.navigation_token,
        }],
        ['POST', '/api/4.0/embed/cookieless_session/acquire', {
          session_reference_token: reference, external_user_id: 'stolen', models: ['thelook'], permissions: ['access_data'],
        }],
        ['DELETE', `/api/4.0/embed/cookieless_session/${encodeURIComponent(reference)}`, null],
      ]) {
        const direct = await json(`${GATEWAY}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: body ? JSON.stringify(body) : undefined,
        });
        assert.equal(direct.status, 403, `${who}: ${method} ${path.replace(reference, '<reference>')} through the gateway: ${direct.text}`);
      }
    }
    // 7. No Looker secret in anything the browser received.
    const captured = await allResponses();
    const after = await lookerSideTokens();
    const secrets = [
      ...demoSecrets().map((s) => ['demo secret', s]),
      ...after.access.map((s) => ['Looker access token', s]),
      ...after.references.map((s) => ['session reference token', s]),
    ];
    const referencePrints = new Set(await referenceFingerprints());
    assert.ok(referencePrints.size >= 2, `the simulator lists ${referencePrints.size} embed sessions`);
    const bodies = captured.filter((r) => r.body !== null).length;
    log(`${captured.length} responses captured (${bodies} bodies); ${secrets.length} secrets, ${referencePrints.size} reference token fingerprints`);
    assert.ok(bodies > 10, 'too few bodies captured');
    for (const response of captured) {
      const where = `${response.method} ${response.url.slice(0, 120)} (${response.who})`;
      const everything = `${response.url}\n${JSON.stringify(response.headers)}\n${response.body ?? ''}`;
      for (const [what, secret] of secrets) {
        assert.ok(!everything.includes(secret), `${what} in ${where}`);
      }
      // The SDK's bundle names `session_reference_token_ttl`; nothing names the token.
      assert.ok(!/session_reference_token(?!_ttl)/.test(everything), `a session_reference_token field in ${where}`);
      // Live sessions' reference tokens are known only by fingerprint: no token-like
      // string the browser received has one.
      for (const candidate of everything.match(/[A-Za-z0-9]{16,}/g) || []) {
        assert.ok(!referencePrints.has(fingerprint(candidate)), `a session reference token in ${where}`);
      }
    }
    log('ok');
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
