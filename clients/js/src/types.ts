/** The shapes the client sends and returns. */

/**
 * What to count and against which limit: `limit` per `window` seconds, or the name of one
 * of the tenant's `policy`s (docs/policies.md), not both.
 */
export interface CheckOptions {
  /** Requests (or units of `cost`) allowed per window. */
  limit?: number;
  /** The window, in seconds. */
  window?: number;
  /** A named policy of the tenant, instead of `limit` and `window`. */
  policy?: string;
  /** Units this request counts for (default 1). */
  cost?: number;
  /** `sliding_window` (the service's default), `fixed_window`, `token_bucket`, ... */
  algorithm?: string;
  /** The caller's client address, for analytics and abuse detection. */
  ip?: string;
  route?: string;
  userAgent?: string;
  userId?: string;
  /** Customer segment (tier); default: the API key's. */
  segment?: string;
}

/** One check of a batch. */
export interface Check extends CheckOptions {
  key: string;
}

/** The service's decision on one check. */
export interface CheckResult {
  allowed: boolean;
  remaining: number;
  /** Seconds until the window resets. */
  resetIn: number;
  /** Seconds after which a retry may succeed; `null` when allowed or when retrying cannot help. */
  retryAfter: number | null;
  limit: number;
  /** `ok`, `limit`, `blocked`, `fail_open`, ... or `client_fail_open` (see `failOpen`). */
  reason: string;
}

export interface RateWatchOptions {
  /** The service's URL; default `$RATEWATCH_URL`, then `http://127.0.0.1:8080`. */
  baseUrl?: string;
  /** Milliseconds to wait for an answer (default 2000). */
  timeout?: number;
  /**
   * When the service cannot answer (unreachable, timeout, 5xx, garbage): `true` (default)
   * returns an allowed result whose reason is `client_fail_open`; `false` throws a
   * `ServiceUnavailableError`.
   */
  failOpen?: boolean;
  /** A signed key's signing secret (default `$RATEWATCH_SIGNING_SECRET`): every request is signed. */
  signingSecret?: string;
  /** Called when a check fails open, with the error; default: `console.warn`. */
  onFailOpen?: (error: Error, checks: readonly Check[]) => void;
}
