"""Verifies webhooks with the official Standard Webhooks library.

Reads a JSON list of {"secret", "body", "headers"} and prints, for each, "ok"
or "rejected: <the library's reason>". Exits 3 when the library is missing.
"""

import json
import sys

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as e:
    print(f"cannot import standardwebhooks: {e}", file=sys.stderr)
    sys.exit(3)

verdicts = []
with open(sys.argv[1], encoding="utf-8") as f:
    cases = json.load(f)
for case in cases:
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        verdicts.append("ok")
    except WebhookVerificationError as e:
        verdicts.append(f"rejected: {e}")
print(json.dumps(verdicts))
