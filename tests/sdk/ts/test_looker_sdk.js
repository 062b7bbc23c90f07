// Looker's official TypeScript SDK (@looker/sdk + @looker/sdk-node, pinned in
// package-lock.json) through the lookergate demo gateway, sending the IdP token instead
// of logging in to Looker. Run by tests/sdk/run.sh (`make sdk-test`) with:
//   LOOKERGATE_URL      the gateway (http://127.0.0.1:PORT)
//   LOOKERGATE_TOKEN    alice's IdP JWT (analysts: the demo's analyst rules)
//   LOOKERGATE_SIM_URL  the simulator, to check what reached "Looker"
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const { Looker40SDK } = require('@looker/sdk')
const { NodeTransport } = require('@looker/sdk-node')
const { ApiSettings, AuthSession, LookerSDKError } = require('@looker/sdk-rtl')

const URL = process.env.LOOKERGATE_URL
const TOKEN = process.env.LOOKERGATE_TOKEN
const SIM_URL = process.env.LOOKERGATE_SIM_URL

/** An auth session that presents the caller's IdP token: the gateway owns Looker logins. */
class IdpTokenSession extends AuthSession {
  constructor(settings, transport, idpToken) {
    super(settings, transport)
    this.idpToken = idpToken
  }

  isAuthenticated() {
    return true
  }

  async getToken() {
    return { access_token: this.idpToken() }
  }

  async authenticate(props) {
    props.headers = { ...(props.headers || {}), Authorization: `Bearer ${this.idpToken()}` }
    return props
  }

  async login() {
    throw new Error('the gateway owns authentication: no Looker login through it')
  }

  async logout() {
    return false
  }
}

function gatewaySdk(idpToken) {
  const settings = new ApiSettings({ base_url: URL, verify_ssl: false, timeout: 300 })
  const transport = new NodeTransport(settings)
  return new Looker40SDK(new IdpTokenSession(settings, transport, idpToken))
}

const QUERY = {
  model: 'thelook',
  view: 'orders',
  fields: ['orders.status', 'orders.count'],
  // The demo's guardrails: a filter on orders.created_date, at most 500 rows.
  filters: { 'orders.created_date': '2026-01%' },
  limit: '10',
}

const sdk = gatewaySdk(() => TOKEN)

// node:http, not fetch: the SDK's transport replaces the global AbortSignal helpers.
function getJson(url) {
  return new Promise((resolve, reject) => {
    require('node:http')
      .get(url, (res) => {
        let body = ''
        res.on('data', (chunk) => (body += chunk))
        res.on('end', () => resolve(JSON.parse(body)))
      })
      .on('error', reject)
  })
}

test('User: me and user answer as the analyst role through the gateway', async () => {
  const me = await sdk.ok(sdk.me())
  assert.ok(me.id, 'me() returned no user id')
  const user = await sdk.ok(sdk.user(me.id))
  assert.equal(user.id, me.id)
  assert.equal(user.email, me.email)
})

test('Dashboard and Look: dashboard 1 and look 1', async () => {
  const dashboard = await sdk.ok(sdk.dashboard('1'))
  assert.equal(dashboard.id, '1')
  const look = await sdk.ok(sdk.look('1'))
  assert.equal(look.id, '1')
  assert.equal(look.title, 'Orders by Status')
})

test('Query: run_inline_query under the guardrails returns rows', async () => {
  const rows = await sdk.ok(sdk.run_inline_query({ result_format: 'json', body: QUERY }))
  assert.ok(Array.isArray(rows) && rows.length > 0, `no rows: ${JSON.stringify(rows)}`)
  assert.ok('orders.count' in rows[0], JSON.stringify(rows[0]))
})

test('Query: create_query is allowed; run_query of a stored query is refused', async () => {
  const created = await sdk.ok(sdk.create_query(QUERY))
  assert.ok(created.id, 'create_query returned no id')
  assert.deepEqual([created.model, created.view], ['thelook', 'orders'])
  // The gateway cannot read a stored query: the guarded rule refuses to run it by id.
  const run = await sdk.run_query({ query_id: created.id, result_format: 'json' })
  assert.equal(run.ok, false)
  assert.equal(run.error.rule, 'analysts-query-orders', JSON.stringify(run.error))
  assert.match(run.error.message, /cannot inspect/)
  await assert.rejects(sdk.ok(sdk.run_query({ query_id: created.id, result_format: 'json' })), LookerSDKError)
})

test('Dashboard: search_dashboards', async () => {
  const answer = await sdk.search_dashboards({ title: 'Orders' })
  assert.ok(answer.ok, JSON.stringify(answer.error))
  assert.ok(Array.isArray(answer.value) && answer.value.length > 0, JSON.stringify(answer.value))
  for (const dashboard of answer.value) assert.ok(dashboard.id, JSON.stringify(dashboard))
})

test("a guardrail refusal surfaces as the SDK's error with the gateway's 403 JSON", async () => {
  const { filters, ...unfiltered } = QUERY
  const answer = await sdk.run_inline_query({ result_format: 'json', body: unfiltered })
  assert.equal(answer.ok, false)
  assert.equal(answer.error.error, 'forbidden', JSON.stringify(answer.error))
  assert.equal(answer.error.rule, 'analysts-query-orders', JSON.stringify(answer.error))
  assert.match(answer.error.message, /query\.filters/)
  await assert.rejects(sdk.ok(sdk.run_inline_query({ result_format: 'json', body: unfiltered })), LookerSDKError)
})

test('Looker received Looker tokens, never the IdP token', { skip: !SIM_URL }, async () => {
  const seen = await getJson(`${SIM_URL}/__sim/requests`)
  assert.ok(seen.length > 0)
  for (const r of seen) {
    assert.ok(!(r.headers.authorization || '').includes(TOKEN), `${r.path}: the IdP token reached Looker`)
  }
})

// One operation of every tag of Looker's spec (tests/sdk/tag_samples.py writes the list
// to LOOKERGATE_TAG_SAMPLES), called by its name, with the sampler's token: a test-only
// issuer whose one rule, after the demo's, allows exactly these operations.
const SAMPLER_TOKEN = process.env.LOOKERGATE_SAMPLER_TOKEN
const SAMPLES = process.env.LOOKERGATE_TAG_SAMPLES

/** The SDK's arguments: a request object when the method takes one (`request`), else
 *  the path and required query parameters in order, or the body alone. */
function sdkArgs(method, sample) {
  const first = /^(?:async\s+)?[\w$]+\s*\(\s*([\w$]*)/.exec(method.toString())
  if (first && first[1] === 'request') return [sample.args]
  if ('body' in sample.args) return [sample.args.body]
  return sample.positional.map((name) => sample.args[name])
}

test('one operation of every tag of the spec, by name, through the gateway', { skip: !(SAMPLER_TOKEN && SAMPLES) }, async (t) => {
  const sampler = gatewaySdk(() => SAMPLER_TOKEN)
  const samples = JSON.parse(require('node:fs').readFileSync(SAMPLES, 'utf8'))
  assert.ok(samples.length >= 35, `${samples.length} samples`)
  for (const sample of samples) {
    await t.test(`${sample.tag}: ${sample.operation}`, async () => {
      const method = sampler[sample.operation]
      assert.equal(typeof method, 'function', `the SDK has no ${sample.operation}`)
      const answer = await method.apply(sampler, sdkArgs(method, sample))
      if (sample.expect !== 200) {
        assert.equal(answer.ok, false, JSON.stringify(answer.value))
        assert.equal(answer.error.error, 'forbidden', JSON.stringify(answer.error))
        assert.ok(JSON.stringify(answer.error).includes(sample.refusal), JSON.stringify(answer.error))
        return
      }
      assert.ok(answer.ok, JSON.stringify(answer.error))
      const value = answer.value
      if (sample.kind === 'array') assert.ok(Array.isArray(value), JSON.stringify(value))
      else if (sample.kind === 'object') assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), JSON.stringify(value))
      else assert.equal(typeof value, 'string', JSON.stringify(value))
    })
  }
})
