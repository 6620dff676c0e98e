import createClient from "openapi-fetch";
import type { paths } from "./tuma-api.js";

/** A client typed from tuma's OpenAPI document (`tuma openapi`). */
export function tumaClient(baseUrl: string, apiKey: string) {
  return createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${apiKey}` } });
}
export type Tuma = ReturnType<typeof tumaClient>;

/** Sends a login code. Retrying with the same loginAttemptId never sends twice. */
export async function sendLoginCode(tuma: Tuma, to: string, code: string, loginAttemptId: string) {
  const { data, error, response } = await tuma.POST("/v1/otp", {
    params: { header: { "Idempotency-Key": loginAttemptId } },
    body: { to, code, purpose: "login" },
  });
  if (error) {
    // application/problem+json: {type, title, status, detail, field?, rule?}
    if (response.status === 429) {
      const retryAfterSeconds = Number(response.headers.get("Retry-After"));
      throw new Error(`too many codes to ${to}; try again in ${retryAfterSeconds} s`);
    }
    throw new Error(`${error.title}: ${error.detail} (${error.field ?? error.rule ?? "-"})`);
  }
  return data; // { id, status: "pending", expires_at }
}
