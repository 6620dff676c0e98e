// What the auth service does with tuma, run by CI against a live `tuma serve`:
// hear status webhooks, send a code, send a notification with variables, read
// a delivery with its attempts, receipts and cost, list a customer's
// deliveries, replay, cancel, send a batch.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { WebhookVerificationError } from "standardwebhooks";
import { sendLoginCode, tumaClient } from "./send-otp.js";
import type { components } from "./tuma-api.js";
import { type TumaEvent, verifyTumaWebhook } from "./verify-webhook.js";

type Delivery = components["schemas"]["DeliveryView"];

const baseUrl = process.env.TUMA_URL ?? "http://127.0.0.1:8080";
const tuma = tumaClient(baseUrl, process.env.TUMA_API_KEY ?? "");
const ops = tumaClient(baseUrl, process.env.TUMA_OPS_KEY ?? "");

async function delivery(id: string): Promise<Delivery> {
  const { data, error } = await tuma.GET("/v1/deliveries/{id}", { params: { path: { id } } });
  if (error) throw new Error(`${error.title}: ${error.detail}`);
  return data;
}

async function untilSent(id: string): Promise<Delivery> {
  for (let i = 0; i < 100; i++) {
    const d = await delivery(id);
    if (d.status !== "pending" && d.status !== "sending") return d;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${id} was not sent within 10 s`);
}

// 0. A webhook receiver on 127.0.0.1, registered (by ops) for this service's key.
const events: TumaEvent[] = [];
let secret = "";
let lastRaw: { body: string; headers: Record<string, string | string[] | undefined> } | undefined;
const receiver = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    try {
      events.push(verifyTumaWebhook(secret, body, req.headers));
      lastRaw = { body, headers: req.headers };
      res.writeHead(204).end();
    } catch (e) {
      res.writeHead(e instanceof WebhookVerificationError ? 400 : 500).end();
    }
  });
});
await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/tuma-events`;
const endpoint = await ops.POST("/v1/webhooks", {
  body: { key: "auth-service", url: hookUrl, events: ["delivery.sent", "delivery.failed", "delivery.canceled"] },
});
assert.equal(endpoint.response.status, 201);
assert.ok(endpoint.data);
secret = endpoint.data.secret;
assert.ok(secret.startsWith("whsec_"));

async function untilEvent(type: string, id: string): Promise<TumaEvent> {
  for (let i = 0; i < 150; i++) {
    const found = events.find((e) => e.type === type && e.data.id === id);
    if (found) return found;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no ${type} webhook for ${id} within 15 s`);
}

// 1. A login code; the same attempt id again gives the same delivery.
const code = await sendLoginCode(tuma, "0711000001", "482913", "login-attempt-1");
assert.equal(code.status, "pending");
assert.ok(code.expires_at);
const again = await sendLoginCode(tuma, "0711000001", "482913", "login-attempt-1");
assert.equal(again.id, code.id);

// 2. A notification with variables of each kind.
const welcome = await tuma.POST("/v1/notifications", {
  body: { to: "Amina@Example.org", template: "welcome", vars: { name: "Amina", points: 12, vip: true } },
});
assert.equal(welcome.response.status, 202);
assert.equal(welcome.response.headers.get("Location"), `/v1/deliveries/${welcome.data?.id}`);

// 3. The delivery, typed: attempts, receipts, cost; never the code.
const sent: Delivery = await untilSent(code.id);
assert.equal(sent.status, "sent");
assert.equal(sent.recipient, "+254711000001");
const first = sent.attempts[0];
assert.ok(first);
assert.equal(first.outcome, "accepted");
const receipts: Delivery["receipts"] = sent.receipts;
assert.ok(Array.isArray(receipts));
const cost: string | undefined = sent.cost?.amount;
console.log(`sent by ${sent.provider} in ${first.latency_ms} ms, cost ${cost ?? "unknown"} ${sent.cost?.currency ?? ""}`);
assert.ok(!JSON.stringify(sent).includes("482913"), "the code is never shown");

// 4. Everything sent to one customer, by the number as they typed it.
const page = await tuma.GET("/v1/deliveries", { params: { query: { recipient: "0711 000 001", since: "2h" } } });
assert.ok(page.data);
assert.deepEqual(page.data.items.map((d) => d.id), [code.id]);

// 5. Replay (ops): an OTP is refused with its reason, never sent twice.
const replay = await ops.POST("/v1/deliveries/{id}/replay", {
  params: { path: { id: code.id } },
  body: { dry_run: true },
});
assert.ok(replay.data);
assert.equal(replay.data.replayed.length, 0);
assert.equal(replay.data.refused[0]?.id, code.id);

// 6. Cancel a notification scheduled for later: the key that sent it may.
const later = new Date(Date.now() + 3_600_000).toISOString();
const scheduled = await tuma.POST("/v1/notifications", {
  body: { to: "+254711000002", template: "welcome", vars: { name: "Juma" }, send_at: later },
});
assert.ok(scheduled.data);
const canceled = await tuma.POST("/v1/deliveries/{id}/cancel", { params: { path: { id: scheduled.data.id } } });
assert.equal(canceled.data?.status, "canceled");
const tooLate = await tuma.POST("/v1/deliveries/{id}/cancel", { params: { path: { id: code.id } } });
assert.equal(tooLate.response.status, 409);
assert.equal(tooLate.error?.delivery_status, "sent");

// 7. The webhooks: signed, checked by the official library, the code never in them.
const sentEvent = await untilEvent("delivery.sent", code.id);
assert.equal(sentEvent.data.purpose, "login");
assert.equal(sentEvent.data.recipient, "+2547******01");
const canceledEvent = await untilEvent("delivery.canceled", scheduled.data.id);
assert.equal(canceledEvent.data.status, "canceled");
assert.ok(!events.some((e) => JSON.stringify(e).includes("482913")), "the code is never in a webhook");
assert.ok(lastRaw);
const altered = JSON.parse(lastRaw.body) as TumaEvent;
altered.data.status = "delivered";
const tampered = JSON.stringify(altered);
assert.notEqual(tampered, lastRaw.body);
assert.throws(() => verifyTumaWebhook(secret, tampered, lastRaw?.headers ?? {}), WebhookVerificationError);
receiver.close();

// 8. A batch: each item answered on its own, a refused one naming its field.
const batch = await tuma.POST("/v1/notifications/batch", {
  body: {
    items: [
      { to: "+254711000003", template: "welcome", vars: { name: "Wanjiru" }, idempotency_key: "welcome-3" },
      { to: "not a number", template: "welcome", vars: { name: "Baraka" } },
    ],
  },
});
assert.ok(batch.data);
assert.equal(batch.data.accepted, 1);
assert.equal(batch.data.items[0]?.status, "pending");
assert.equal(batch.data.items[1]?.problem?.field, "items[1].to");

// 9. A refusal names the field.
const bad = await tuma.POST("/v1/otp", { body: { to: "not a number", code: "1234" } });
assert.equal(bad.response.status, 422);
assert.equal(bad.error?.field, "to");

console.log("auth-service example: all checks passed");
