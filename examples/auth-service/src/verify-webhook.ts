import { Webhook } from "standardwebhooks";
import type { components } from "./tuma-api.js";

/** A tuma status webhook's body, typed from the document's `webhooks` section. */
export type TumaEvent = components["schemas"]["DeliveryEvent"];

/**
 * Checks a webhook with the endpoint's secret (`whsec_…`, shown once when it
 * was registered) by the Standard Webhooks rules: the signature over the id,
 * timestamp and the raw body, and a timestamp within five minutes. Throws
 * `WebhookVerificationError` for a forged, altered or replayed one. Pass the
 * body exactly as received, not re-serialised JSON. The `webhook-id` stays
 * the same when tuma retries: use it to ignore a repeat.
 */
export function verifyTumaWebhook(
  secret: string,
  rawBody: string,
  headers: Record<string, string | string[] | undefined>,
): TumaEvent {
  const header = (name: string) => String(headers[name] ?? "");
  return new Webhook(secret).verify(rawBody, {
    "webhook-id": header("webhook-id"),
    "webhook-timestamp": header("webhook-timestamp"),
    "webhook-signature": header("webhook-signature"),
  }) as TumaEvent;
}
