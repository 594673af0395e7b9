/**
 * `RateWatch`: the client of the check API (`POST /v1/check`, `POST /v1/batch`), on the
 * global `fetch` (Node 18+), with no runtime dependency.
 */
import {
  errorForStatus,
  type Problem,
  RateWatchError,
  ServiceUnavailableError,
} from './errors.js';
import { signatureHeaders } from './signing.js';
import type { Check, CheckOptions, CheckResult, RateWatchOptions } from './types.js';

export const DEFAULT_URL = 'http://127.0.0.1:8080';
export const DEFAULT_TIMEOUT = 2000;
/** The `reason` of a result the client made up because the service could not answer. */
export const FAIL_OPEN_REASON = 'client_fail_open';

const USER_AGENT = 'ratewatch-node';

function env(name: string): string | undefined {
  const value = typeof process === 'undefined' ? undefined : process.env[name];
  return value ? value : undefined;
}

/** The request body of one check: every field that is set, in the API's snake case. */
function checkBody(check: Check): Record<string, unknown> {
  const body: Record<string, unknown> = {
    key: check.key,
    limit: check.limit,
    window: check.window,
    policy: check.policy,
    cost: check.cost ?? 1,
    algorithm: check.algorithm,
    ip: check.ip,
    route: check.route,
    user_agent: check.userAgent,
    user_id: check.userId,
    segment: check.segment,
  };
  for (const name of Object.keys(body)) if (body[name] === undefined) delete body[name];
  return body;
}

/** A check needs `limit` and `window`, or a `policy`: a mistake of the caller's, thrown. */
function validate(check: Check): void {
  const explicit = check.limit !== undefined || check.window !== undefined;
  if (check.policy !== undefined ? explicit : check.limit === undefined || check.window === undefined) {
    throw new TypeError('a check needs limit and window, or a policy (not both)');
  }
}

function malformed(what: string): ServiceUnavailableError {
  return new ServiceUnavailableError(`the service answered a malformed response: ${what}`, {
    status: 200,
  });
}

function integer(data: Record<string, unknown>, name: string, fallback?: number): number {
  const value = data[name] ?? fallback;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw malformed(`'${name}' is ${JSON.stringify(value)}`);
  }
  return value;
}

function toResult(data: unknown, check: Check): CheckResult {
  if (typeof data !== 'object' || data === null || typeof (data as { allowed?: unknown }).allowed !== 'boolean') {
    throw malformed("no boolean 'allowed'");
  }
  const record = data as Record<string, unknown>;
  const allowed = record.allowed as boolean;
  const reason = record.reason ?? (allowed ? 'ok' : 'limit');
  if (typeof reason !== 'string') throw malformed(`'reason' is ${JSON.stringify(reason)}`);
  const retryAfter = record.retry_after;
  return {
    allowed,
    remaining: integer(record, 'remaining'),
    resetIn: integer(record, 'reset_in'),
    retryAfter: retryAfter === null || retryAfter === undefined ? null : integer(record, 'retry_after'),
    limit: integer(record, 'limit', check.limit ?? 0),
    reason,
  };
}

/**
 * The allowed result of a check the service could not decide: nothing was counted (a check
 * by policy, whose windows only the service knows: `limit` and `remaining` 0).
 */
export function failedOpen(check: Check): CheckResult {
  const limit = check.limit ?? 0;
  return {
    allowed: true,
    remaining: Math.max(0, limit - (check.cost ?? 1)),
    resetIn: check.window ?? 0,
    retryAfter: null,
    limit,
    reason: FAIL_OPEN_REASON,
  };
}

function unreachable(error: unknown, timeout: number): ServiceUnavailableError {
  const name = error instanceof Error ? error.name : 'Error';
  if (name === 'TimeoutError' || name === 'AbortError') {
    return new ServiceUnavailableError(`RateWatch did not answer within ${timeout} ms`, { cause: error });
  }
  const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
  const message = error instanceof Error ? error.message : String(error);
  return new ServiceUnavailableError(`RateWatch did not answer: ${message}${cause}`, { cause: error });
}

/**
 * The RateWatch client. `apiKey` defaults to `$RATEWATCH_API_KEY`.
 *
 * ```js
 * const limiter = new RateWatch(process.env.RATEWATCH_API_KEY);
 * const result = await limiter.check('user:123', { limit: 100, window: 3600 });
 * ```
 */
export class RateWatch {
  readonly baseUrl: string;
  readonly timeout: number;
  readonly failOpen: boolean;
  readonly #apiKey: string;
  readonly #signingSecret: string | undefined;
  readonly #onFailOpen: (error: Error, checks: readonly Check[]) => void;

  constructor(apiKey?: string, options: RateWatchOptions = {}) {
    const key = apiKey ?? env('RATEWATCH_API_KEY');
    if (!key) throw new RateWatchError('no RateWatch API key: pass apiKey or set RATEWATCH_API_KEY');
    const baseUrl = options.baseUrl ?? env('RATEWATCH_URL') ?? DEFAULT_URL;
    let parsed: URL;
    try {
      parsed = new URL(baseUrl);
    } catch {
      throw new RateWatchError(`baseUrl ${JSON.stringify(baseUrl)} is not a URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new RateWatchError(`baseUrl ${JSON.stringify(baseUrl)} is not an http(s) URL`);
    }
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    if (!(Number.isFinite(timeout) && timeout > 0)) {
      throw new RateWatchError(`timeout ${String(timeout)} is not a positive number of milliseconds`);
    }
    this.#apiKey = key;
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.timeout = timeout;
    this.failOpen = options.failOpen ?? true;
    this.#signingSecret = options.signingSecret ?? env('RATEWATCH_SIGNING_SECRET');
    this.#onFailOpen =
      options.onFailOpen ??
      ((error, checks) =>
        console.warn(`RateWatch unavailable, allowing ${checks.length} check(s) (fail open): ${error.message}`));
  }

  /**
   * Count `cost` (default 1) against `key` (`limit` per `window` seconds, or the windows of
   * the named `policy`) and decide.
   */
  async check(key: string, options: CheckOptions): Promise<CheckResult> {
    const check: Check = { ...options, key };
    validate(check);
    try {
      return toResult(await this.#post('/v1/check', checkBody(check)), check);
    } catch (error) {
      return this.#failOpenOrThrow(error, [check])[0] as CheckResult;
    }
  }

  /** Decide several checks in one request; the results are in the same order. */
  async batch(checks: readonly Check[]): Promise<CheckResult[]> {
    if (checks.length === 0) return [];
    checks.forEach(validate);
    try {
      const data = await this.#post('/v1/batch', { checks: checks.map(checkBody) });
      const results = (data as { results?: unknown } | null)?.results;
      if (!Array.isArray(results) || results.length !== checks.length) {
        throw malformed(`expected ${checks.length} results`);
      }
      return results.map((item, index) => toResult(item, checks[index] as Check));
    } catch (error) {
      return this.#failOpenOrThrow(error, checks);
    }
  }

  #failOpenOrThrow(error: unknown, checks: readonly Check[]): CheckResult[] {
    if (!(error instanceof ServiceUnavailableError) || !this.failOpen) throw error;
    this.#onFailOpen(error, checks);
    return checks.map(failedOpen);
  }

  async #post(path: string, payload: unknown): Promise<unknown> {
    const url = new URL(this.baseUrl + path);
    const body = JSON.stringify(payload);
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#apiKey}`,
      'content-type': 'application/json',
      accept: 'application/json',
      'user-agent': USER_AGENT,
    };
    if (this.#signingSecret) Object.assign(headers, signatureHeaders(this.#signingSecret, 'POST', url, body));
    let response: Response;
    let text: string;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.timeout(this.timeout),
      });
      text = await response.text();
    } catch (error) {
      throw unreachable(error, this.timeout);
    }
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      data = undefined;
    }
    if (response.status !== 200) {
      const problem: Problem =
        typeof data === 'object' && data !== null && !Array.isArray(data)
          ? (data as Problem)
          : { status: response.status, detail: text.slice(0, 500) };
      throw errorForStatus(response.status, response.statusText, problem);
    }
    if (data === undefined) throw malformed('not JSON');
    return data;
  }
}
