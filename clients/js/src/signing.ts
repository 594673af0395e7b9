/**
 * Signing the requests of a signed key (`ratewatch keys create --signed`).
 *
 * Each request carries `RateWatch-Timestamp: <Unix seconds>` and
 * `RateWatch-Signature: v1=<hex HMAC-SHA256>` of
 * `timestamp "\n" METHOD "\n" path?query "\n" hex SHA-256 of the body`, keyed by the signing
 * secret as shown (its UTF-8 bytes). The service accepts a timestamp within five minutes of
 * its clock.
 */
import { createHash, createHmac } from 'node:crypto';

export const TIMESTAMP_HEADER = 'RateWatch-Timestamp';
export const SIGNATURE_HEADER = 'RateWatch-Signature';

/**
 * The `RateWatch-Signature` value of one request; `target` is its path and query as sent
 * (percent-encoded, `?query` only when there is one).
 */
export function signature(
  secret: string,
  timestamp: string,
  method: string,
  target: string,
  body: string | Uint8Array,
): string {
  const bodyHash = createHash('sha256').update(body).digest('hex');
  const message = [timestamp, method.toUpperCase(), target, bodyHash].join('\n');
  return 'v1=' + createHmac('sha256', secret).update(message).digest('hex');
}

/** The two headers that sign a request to `url` made now. */
export function signatureHeaders(
  secret: string,
  method: string,
  url: URL,
  body: string,
  now: () => number = Date.now,
): Record<string, string> {
  const timestamp = String(Math.floor(now() / 1000));
  return {
    [TIMESTAMP_HEADER]: timestamp,
    [SIGNATURE_HEADER]: signature(secret, timestamp, method, url.pathname + url.search, body),
  };
}
