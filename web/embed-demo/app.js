// lookergate embedded analytics demo: sign in as a demo user (token from the dev IdP
// that serves this page), call the Looker API through the gateway (CORS), and embed a
// dashboard with the Looker Embed SDK in cookieless mode against the gateway's embed
// endpoints. No Looker secret is ever in this page: the gateway and its broker hold them.
'use strict';

// Same host name as the page (127.0.0.1 or localhost), so the origin is one of those the
// gateway's CORS policy lists and the demo certificate names.
const HOST = window.location.hostname;
const GATEWAY = `http://${HOST}:10000`;
const LOOKER_UI_HOST = `${HOST}:10443`;
const EMBED = `${GATEWAY}/lookergate/embed`;
const DASHBOARD_ID = '1';

const state = { user: null, token: null };

const $ = (id) => document.getElementById(id);

function show(id, text, dataState) {
  const element = $(id);
  element.textContent = text;
  if (dataState) element.dataset.state = dataState;
}

// The dev IdP's POST /token (same origin): a demo user's JWT, claims and all.
async function idpToken(user) {
  const response = await fetch('/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  if (!response.ok) throw new Error(`IdP answered ${response.status}`);
  return (await response.json()).access_token;
}

// A Looker API call from the page, through the gateway: the CORS path.
async function callApi() {
  show('api-status', 'calling GET /api/4.0/user ...', 'pending');
  try {
    const response = await fetch(`${GATEWAY}/api/4.0/user`, {
      headers: { authorization: `Bearer ${state.token}` },
    });
    const requestId = response.headers.get('x-request-id') || '-';
    const body = await response.json();
    if (!response.ok) {
      show('api-status', `${response.status} ${body.error || ''} (request ${requestId})`, 'error');
      return;
    }
    show('api-status', `${response.status} OK (request ${requestId})`, 'ok');
    show('api-user', `${body.display_name || body.email || '?'} (Looker user ${body.id})`);
  } catch (error) {
    show('api-status', `failed: ${error.message}`, 'error');
  }
}

function embedSdk() {
  return LookerEmbedSDK.getEmbedSDK();
}

// Cookieless embedding: the SDK asks the gateway (with the user's IdP token) to acquire
// the embed session and, before the tokens expire, to generate new ones. The gateway
// keeps Looker's session reference token; the page only ever sees navigation, API and
// authentication tokens.
async function embedDashboard() {
  const authorization = `Bearer ${state.token}`;
  const sdk = embedSdk();
  sdk.clearSession();
  sdk.initCookieless(
    LOOKER_UI_HOST,
    { url: `${EMBED}/acquire`, method: 'POST', headers: { authorization } },
    {
      url: `${EMBED}/generate_tokens`,
      method: 'PUT',
      // The SDK's own content-type is replaced by these headers: name it again.
      headers: { authorization, 'content-type': 'application/json' },
    },
  );
  $('dashboard').replaceChildren();
  show('embed-status', 'acquiring the embed session ...', 'pending');
  try {
    await sdk
      .createDashboardWithId(DASHBOARD_ID)
      .appendTo('#dashboard')
      .withClassName('embedded-dashboard')
      .on('dashboard:loaded', () => show('embed-status', 'dashboard loaded', 'loaded'))
      .on('dashboard:run:complete', () => show('embed-status', 'dashboard loaded', 'loaded'))
      .on('session:expired', () => show('embed-status', 'embed session expired', 'expired'))
      .build()
      .connect();
    if ($('embed-status').dataset.state === 'pending') {
      show('embed-status', 'connected', 'connected');
    }
  } catch (error) {
    show('embed-status', `failed: ${error.message || error}`, 'error');
  }
}

async function login(user) {
  if (state.user) await logout();
  show('session-user', `${user} (signing in ...)`);
  try {
    state.token = await idpToken(user);
  } catch (error) {
    show('session-user', `nobody (${error.message})`);
    return;
  }
  state.user = user;
  show('session-user', user);
  $('logout').disabled = false;
  show('logout-status', '-', 'idle');
  await callApi();
  await embedDashboard();
}

// Ends the embed session at the gateway (Looker's delete_embed_cookieless_session, by
// the broker) and forgets the token.
async function logout() {
  if (!state.token) return;
  try {
    const response = await fetch(`${EMBED}/session`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${state.token}` },
    });
    show('logout-status', `${response.status}`, response.ok ? 'ok' : 'error');
  } catch (error) {
    show('logout-status', `failed: ${error.message}`, 'error');
  }
  embedSdk().clearSession();
  $('dashboard').replaceChildren();
  state.user = null;
  state.token = null;
  $('logout').disabled = true;
  show('session-user', 'nobody');
  show('api-status', 'not called', 'idle');
  show('api-user', '-');
  show('embed-status', 'not loaded', 'idle');
}

document.addEventListener('DOMContentLoaded', () => {
  $('ui-host').textContent = `https://${LOOKER_UI_HOST}`;
  for (const button of document.querySelectorAll('button[data-user]')) {
    button.addEventListener('click', () => login(button.dataset.user));
  }
  $('logout').addEventListener('click', () => logout());
});
