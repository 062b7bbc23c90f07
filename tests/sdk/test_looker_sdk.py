"""The official Looker SDK (looker-sdk, pinned in tests/sdk/requirements.txt) works through
lookergate when it sends the IdP token instead of logging in to Looker itself.

Runs against a running stack (`make demo`, or the e2e harness):
  LOOKERGATE_URL     gateway base URL, e.g. http://127.0.0.1:10000 (required)
  LOOKERGATE_TOKEN   an IdP JWT the policy lets call me, dashboard and run_inline_query,
                     e.g. `make -s token USER=alice` (required)
  LOOKERGATE_DENIED_TOKEN  optional: a JWT the policy refuses (`make -s token USER=eve`)
  LOOKERGATE_SIM_URL       optional: the Looker simulator, to check what Looker received
  LOOKERGATE_ACCESS_LOG    optional: a file with Envoy's JSON access log, to check the audit
  .venv/bin/python -m unittest -v tests/sdk/test_looker_sdk.py
"""

from __future__ import annotations

import json
import os
import sys
import time
import unittest
import urllib.request
import uuid
from typing import Callable, Dict, Optional

from looker_sdk import error, models40 as models
from looker_sdk.rtl import api_settings, auth_session, requests_transport, serialize, transport
from looker_sdk.sdk.api40 import methods as methods40


# ---- the snippet users need (docs/looker-sdk.md) -----------------------------------


class GatewaySettings(api_settings.ApiSettings):
    """SDK settings from code: only the gateway's URL, no Looker API3 credentials."""

    def __init__(self, base_url: str, timeout: int = 300):
        self._config = {"base_url": base_url, "timeout": str(timeout), "verify_ssl": "true"}
        super().__init__(filename="", sdk_version="lookergate")

    def read_config(self) -> Dict[str, str]:
        return dict(self._config)


class IdpTokenSession(auth_session.AuthSession):
    """Sends the caller's IdP token on every call; never logs in to Looker (the gateway
    does that with the broker, and refuses /login from clients)."""

    def __init__(self, settings, transport_, get_token: Callable[[], str]):
        super().__init__(settings, transport_, serialize.deserialize40, "4.0")
        self._get_token = get_token

    def authenticate(self, transport_options: transport.TransportOptions) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self._get_token()}"}

    @property
    def is_authenticated(self) -> bool:
        return True

    def login_user(self, sudo_id, transport_options=None) -> None:
        raise error.SDKError("through lookergate the policy decides which Looker user acts")

    def logout(self, full: bool = False, transport_options: Optional[transport.TransportOptions] = None) -> None:
        pass  # nothing to end: the client holds no Looker session


def gateway_sdk(base_url: str, get_token: Callable[[], str]) -> methods40.Looker40SDK:
    settings = GatewaySettings(base_url)
    transport_ = requests_transport.RequestsTransport.configure(settings)
    return methods40.Looker40SDK(
        IdpTokenSession(settings, transport_, get_token),
        serialize.deserialize40,
        serialize.serialize40,
        transport_,
        "4.0",
    )


# ---- the test ----------------------------------------------------------------------

URL = os.environ.get("LOOKERGATE_URL", "").rstrip("/")
TOKEN = os.environ.get("LOOKERGATE_TOKEN", "")
DENIED_TOKEN = os.environ.get("LOOKERGATE_DENIED_TOKEN", "")
SIM_URL = os.environ.get("LOOKERGATE_SIM_URL", "").rstrip("/")
ACCESS_LOG = os.environ.get("LOOKERGATE_ACCESS_LOG", "")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@unittest.skipUnless(URL and TOKEN, "set LOOKERGATE_URL and LOOKERGATE_TOKEN (a running stack)")
class LookerSdkThroughGateway(unittest.TestCase):
    def setUp(self):
        # A marker on every request, to find this test's calls in what Looker received.
        self.marker = f"sdk-{uuid.uuid4().hex[:12]}"
        self.sdk = gateway_sdk(URL, lambda: TOKEN)
        # (Not x-request-id: under use_remote_address Envoy replaces a client's with its own.)
        self.options = {"headers": {"x-sdk-test-marker": self.marker}}
        self.request_ids = []

    def test_me_dashboard_and_inline_query_succeed_with_the_idp_token(self):
        me = self.sdk.me(transport_options=self.options)
        self.assertIsInstance(me, models.User)
        self.assertTrue(me.id, "me() returned no user id")

        dashboard = self.sdk.dashboard("1", transport_options=self.options)
        self.assertIsInstance(dashboard, models.Dashboard)
        self.assertEqual(dashboard.id, "1")

        rows = self.sdk.run_inline_query(
            result_format="json",
            body=models.WriteQuery(
                model="thelook",
                view="orders",
                fields=["orders.status", "orders.count"],
                # The demo's guardrails: a filter on orders.created_date, at most 500 rows.
                filters={"orders.created_date": "2026-01%"},
                limit="10",
            ),
            transport_options=self.options,
        )
        data = json.loads(rows)
        self.assertIsInstance(data, list)
        self.assertTrue(data, "run_inline_query returned no rows")

        if SIM_URL:
            self.assert_looker_got_looker_tokens_only()
        if ACCESS_LOG:
            self.assert_calls_are_audited(["me", "dashboard", "run_inline_query"])

    def assert_looker_got_looker_tokens_only(self):
        requests = [r for r in get_json(f"{SIM_URL}/__sim/requests") if r["headers"].get("x-sdk-test-marker") == self.marker]
        paths = [r["path"] for r in requests]
        # Envoy's request ids for this test's calls: how the access log names them.
        self.request_ids = [r["headers"].get("x-request-id") for r in requests]
        self.assertEqual(
            paths, ["/api/4.0/user", "/api/4.0/dashboards/1", "/api/4.0/queries/run/json"], f"Looker received {paths}"
        )
        for r in requests:
            auth = r["headers"].get("authorization", "")
            self.assertNotIn(TOKEN, auth, "the IdP token reached Looker")
            self.assertTrue(auth, f"{r['path']}: Looker got no credentials")

    def assert_calls_are_audited(self, operations):
        # Envoy flushes access logs every 10s (access_log_flush_interval's default).
        deadline = time.monotonic() + 15
        while True:
            lines = []
            with open(ACCESS_LOG) as f:
                for line in f:
                    if line.lstrip().startswith("{") and json.loads(line).get("request_id") in self.request_ids:
                        lines.append(json.loads(line))
            if len(lines) >= len(operations) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual([l.get("lookergate_operation") for l in lines], operations, lines)
        for entry in lines:
            self.assertEqual(entry.get("lookergate_verdict"), "allow", entry)
            self.assertNotIn(entry.get("lookergate_subject"), (None, "", "-"), entry)
            self.assertNotIn(entry.get("lookergate_identity"), (None, "", "-"), entry)
            self.assertNotIn(TOKEN, json.dumps(entry), "a token in the access log")

    def test_a_sample_of_every_allowed_tag(self):
        """User, Dashboard, Look and Query operations the demo policy allows, with real answers."""
        me = self.sdk.me(transport_options=self.options)
        user = self.sdk.user(me.id, transport_options=self.options)
        self.assertEqual(user.id, me.id)
        self.assertEqual(user.email, me.email)

        look = self.sdk.look("1", transport_options=self.options)
        self.assertIsInstance(look, models.LookWithQuery)
        self.assertEqual(look.id, "1")
        self.assertEqual(look.title, "Orders by Status")

        created = self.sdk.create_query(
            body=models.WriteQuery(
                model="thelook",
                view="orders",
                fields=["orders.status", "orders.count"],
                filters={"orders.created_date": "2026-01%"},
                limit="10",
            ),
            transport_options=self.options,
        )
        self.assertIsInstance(created, models.Query)
        self.assertTrue(created.id, "create_query returned no id")
        self.assertEqual((created.model, created.view), ("thelook", "orders"))
        self.assertEqual(created.filters, {"orders.created_date": "2026-01%"})

        # A stored query is one the gateway cannot read: the guarded rule refuses to run it
        # by id rather than let it bypass the guardrails.
        with self.assertRaises(error.SDKError) as caught:
            self.sdk.run_query(created.id, "json", transport_options=self.options)
        self.assertIn("cannot inspect", caught.exception.message)

    def test_search_dashboards_through_the_gateway(self):
        found = self.sdk.search_dashboards(title="Orders", transport_options=self.options)
        self.assertTrue(found, "search_dashboards found nothing")
        self.assertTrue(all(isinstance(d, models.Dashboard) and d.id for d in found), found)

    def test_a_guardrail_refusal_is_an_sdk_error_naming_the_field(self):
        with self.assertRaises(error.SDKError) as caught:
            self.sdk.run_inline_query(
                result_format="json",
                # No filter on orders.created_date.
                body=models.WriteQuery(model="thelook", view="orders", fields=["orders.count"], limit="10"),
                transport_options=self.options,
            )
        self.assertIn("query.filters", caught.exception.message)
        self.assertIn("rule analysts-query-orders", caught.exception.message)

    # Regression: the SDK structures every non-2xx body into SDKError, whose `message` is
    # required; the gateway's error JSON once had none and the SDK raised cattrs'
    # ClassValidationError instead. Error bodies now carry a Looker-style "message".
    @unittest.skipUnless(DENIED_TOKEN, "set LOOKERGATE_DENIED_TOKEN to check refusals")
    def test_a_refused_caller_gets_the_gateways_403_as_an_sdk_error(self):
        sdk = gateway_sdk(URL, lambda: DENIED_TOKEN)
        with self.assertRaises(error.SDKError) as caught:
            sdk.dashboard("1", transport_options=self.options)
        self.assertTrue(caught.exception.message, "an SDKError without the gateway's reason")

    def test_the_sdk_cannot_log_in_through_the_gateway(self):
        # Looker's own /login is the gateway's business: clients are refused.
        with self.assertRaises(error.SDKError):
            self.sdk.login(client_id="demo-analyst-id", client_secret="demo-analyst-secret", transport_options=self.options)


SAMPLER_TOKEN = os.environ.get("LOOKERGATE_SAMPLER_TOKEN", "")


@unittest.skipUnless(URL and SAMPLER_TOKEN, "set LOOKERGATE_URL and LOOKERGATE_SAMPLER_TOKEN (tests/sdk/run.sh)")
class EveryTagThroughGateway(unittest.TestCase):
    """One operation of every tag of Looker's spec (tests/sdk/tag_samples.py), called by
    its name on the SDK, through the gateway with the sampler's token."""

    def test_one_operation_of_every_tag(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tag_samples  # tests/sdk/tag_samples.py, next to this file

        marker = f"sdk-tags-{uuid.uuid4().hex[:12]}"
        options = {"headers": {"x-sdk-test-marker": marker}}
        sdk = gateway_sdk(URL, lambda: SAMPLER_TOKEN)
        samples = tag_samples.samples()
        spec_tags = {t for p in json.loads(tag_samples.SPEC.read_text())["paths"].values()
                     for op in p.values() if isinstance(op, dict) for t in op.get("tags", [])}
        self.assertEqual({s["tag"] for s in samples}, spec_tags)
        forwarded = []
        for sample in samples:
            with self.subTest(tag=sample["tag"], operation=sample["operation"]):
                args = dict(sample["args"])
                if sample["body_model"]:
                    args["body"] = serialize.converter40.structure(args["body"], getattr(models, sample["body_model"]))
                call = getattr(sdk, sample["operation"])
                if sample["expect"] != 200:
                    with self.assertRaises(error.SDKError) as caught:
                        call(**args, transport_options=options)
                    self.assertIn(sample["refusal"], caught.exception.message)
                    continue
                answer = call(**args, transport_options=options)
                forwarded.append(sample)
                if sample["kind"] == "array":
                    self.assertIsInstance(answer, list, answer)
                elif sample["kind"] == "object":
                    self.assertTrue(hasattr(answer, "__attrs_attrs__") or isinstance(answer, dict), answer)
                else:
                    self.assertIsInstance(answer, str, answer)
        if SIM_URL:
            seen = [(r["method"], r["path"]) for r in get_json(f"{SIM_URL}/__sim/requests")
                    if r["headers"].get("x-sdk-test-marker") == marker]
            for sample in forwarded:
                self.assertTrue(any(m == sample["method"] for m, _ in seen), sample)
            self.assertEqual(len(seen), len(forwarded), f"Looker received {seen}")


if __name__ == "__main__":
    unittest.main()
