/**
 * Rate limiting for Node HTTP servers: a Connect/Express-style `(req, res, next)` middleware
 * (also a plain `node:http` handler wrapper) and a Fastify `onRequest` hook.
 *
 * Each request is checked with the RateWatch service. A denied request is answered 429 with
 * an `application/problem+json` body, `Retry-After`, `RateLimit` and `RateLimit-Policy`; an
 * allowed one gets the two `RateLimit` headers and goes on.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

import type { RateWatch } from './client.js';
import { FAIL_OPEN_REASON } from './client.js';
import { ServiceUnavailableError } from './errors.js';
import type { CheckResult } from './types.js';

const MAX_TEXT = 2048; // the service's limit on `route` and `user_agent`
const PROBLEM_TYPE = 'urn:ratewatch:problem:';

/** Returns the limited key of a request, or `null`/`undefined` to let it through unchecked. */
export type KeyFunction<Req = IncomingMessage> = (
  req: Req,
) => string | null | undefined | Promise<string | null | undefined>;

export interface RateLimitOptions<Req = IncomingMessage> {
  /** The client; it decides whether the middleware fails open (`failOpen`) or answers 503. */
  client: RateWatch;
  /** With `window`: requests per window; or give a `policy` instead. */
  limit?: number;
  /** Seconds. */
  window?: number;
  /** A named policy of the tenant (docs/policies.md), instead of `limit` and `window`. */
  policy?: string;
  /** Default: {@link byIp}. Also {@link byHeader}, or a function of your own. */
  key?: KeyFunction<Req>;
  cost?: number;
  algorithm?: string;
}

type AnyRequest = IncomingMessage & { ip?: string; originalUrl?: string };

/** The client's address: Express's `req.ip` (honours `trust proxy`), else the socket's peer. */
export function clientIp(req: IncomingMessage): string | undefined {
  const ip = (req as AnyRequest).ip ?? req.socket?.remoteAddress;
  if (!ip) return undefined;
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/** The default key: `ip:<client address>`. */
export const byIp: KeyFunction = (req) => {
  const ip = clientIp(req);
  return ip === undefined ? null : `ip:${ip}`;
};

/** A key from a request header, e.g. `byHeader('x-api-key')` → `x-api-key:<value>`; absent: unchecked. */
export function byHeader(name: string, prefix = `${name.toLowerCase()}:`): KeyFunction {
  const header = name.toLowerCase();
  return (req) => {
    const value = req.headers[header];
    const first = Array.isArray(value) ? value[0] : value;
    return first ? prefix + first : null;
  };
}

/** The outcome of one request: headers to set and, when refused, the answer to send. */
export interface Verdict {
  headers: Record<string, string>;
  refusal?: { status: number; body: string };
}

function problem(status: number, kind: string, title: string, detail: string, extra: object = {}): string {
  return JSON.stringify({ type: PROBLEM_TYPE + kind, title, status, detail, ...extra });
}

function pathOf(req: AnyRequest): string | undefined {
  const url = req.originalUrl ?? req.url;
  if (!url) return undefined;
  const path = url.split('?', 1)[0] ?? '';
  return path.slice(0, MAX_TEXT) || undefined;
}

/** Checks one request; shared by the middleware and the Fastify hook. */
export function rateLimiter<Req extends IncomingMessage = IncomingMessage>(
  options: RateLimitOptions<Req>,
): (req: Req) => Promise<Verdict> {
  const { client, limit, window, cost, algorithm, policy } = options;
  const explicit = limit !== undefined || window !== undefined;
  if (policy !== undefined ? explicit : limit === undefined || window === undefined) {
    throw new TypeError('rateLimit needs limit and window, or a policy (not both)');
  }
  const key = options.key ?? (byIp as unknown as KeyFunction<Req>);
  // a policy's windows are the service's: the header names the policy and the limit of the
  // window that decided (the draft's `w` is optional)
  const name = policy ?? 'default';
  const described = (result: CheckResult): string =>
    policy === undefined ? `"default";q=${limit};w=${window}` : `"${name}";q=${result.limit}`;
  const rateLimitHeaders = (result: CheckResult): Record<string, string> => ({
    'RateLimit-Policy': described(result),
    RateLimit: `"${name}";r=${result.remaining};t=${result.resetIn}`,
  });

  return async (req) => {
    const limited = await key(req);
    if (limited === null || limited === undefined) return { headers: {} };
    const userAgent = req.headers['user-agent'];
    let result: CheckResult;
    try {
      result = await client.check(limited, {
        ...(policy === undefined ? { limit, window } : { policy }),
        ...(cost === undefined ? {} : { cost }),
        ...(algorithm === undefined ? {} : { algorithm }),
        ...(clientIp(req) === undefined ? {} : { ip: clientIp(req) as string }),
        ...(pathOf(req) === undefined ? {} : { route: pathOf(req) as string }),
        ...(userAgent ? { userAgent: userAgent.slice(0, MAX_TEXT) } : {}),
      });
    } catch (error) {
      if (!(error instanceof ServiceUnavailableError)) throw error;
      const body = problem(503, 'service-unavailable', 'Service unavailable', 'the rate limiter is unavailable');
      return { headers: { 'Retry-After': '1' }, refusal: { status: 503, body } };
    }
    if (result.allowed) {
      // A result the client made up has no counters worth reporting.
      return { headers: result.reason === FAIL_OPEN_REASON ? {} : rateLimitHeaders(result) };
    }
    const headers = rateLimitHeaders(result);
    let detail =
      policy === undefined
        ? `rate limit of ${limit} per ${window}s exceeded (${result.reason})`
        : `rate limit of policy ${policy} exceeded (${result.reason})`;
    const extra: Record<string, unknown> = { reason: result.reason };
    if (result.retryAfter !== null) {
      headers['Retry-After'] = String(result.retryAfter);
      detail += `; retry in ${result.retryAfter}s`;
      extra.retry_after = result.retryAfter;
    }
    return { headers, refusal: { status: 429, body: problem(429, 'rate-limited', 'Too many requests', detail, extra) } };
  };
}

/**
 * Connect/Express-style middleware: `app.use(rateLimit({ client, limit: 100, window: 60 }))`.
 * Errors other than an unavailable service (a bad API key, an invalid limit) go to `next(error)`.
 */
export function rateLimit<Req extends IncomingMessage = IncomingMessage>(
  options: RateLimitOptions<Req>,
): (req: Req, res: ServerResponse, next: (error?: unknown) => void) => Promise<void> {
  const decide = rateLimiter(options);
  return async (req, res, next) => {
    let verdict: Verdict;
    try {
      verdict = await decide(req);
    } catch (error) {
      next(error);
      return;
    }
    for (const [name, value] of Object.entries(verdict.headers)) res.setHeader(name, value);
    if (!verdict.refusal) {
      next();
      return;
    }
    res.statusCode = verdict.refusal.status;
    res.setHeader('Content-Type', 'application/problem+json');
    res.setHeader('Content-Length', Buffer.byteLength(verdict.refusal.body));
    res.end(verdict.refusal.body);
  };
}

/** The part of Fastify's request the hook reads. */
export interface FastifyLikeRequest {
  raw: IncomingMessage;
  ip?: string;
}

/** The part of Fastify's reply the hook uses. */
export interface FastifyLikeReply {
  code(status: number): FastifyLikeReply;
  header(name: string, value: string): FastifyLikeReply;
  send(payload?: unknown): FastifyLikeReply;
}

/**
 * A Fastify `onRequest` hook: `fastify.addHook('onRequest', fastifyRateLimit({ client, limit, window }))`.
 * The key function receives the raw `IncomingMessage` (with Fastify's `request.ip` as `ip`).
 */
export function fastifyRateLimit(
  options: RateLimitOptions,
): (request: FastifyLikeRequest, reply: FastifyLikeReply) => Promise<FastifyLikeReply | undefined> {
  const decide = rateLimiter(options);
  return async (request, reply) => {
    const raw = request.raw as AnyRequest;
    if (request.ip !== undefined && raw.ip === undefined) raw.ip = request.ip;
    const verdict = await decide(raw);
    for (const [name, value] of Object.entries(verdict.headers)) reply.header(name, value);
    if (!verdict.refusal) return undefined;
    // Fastify's async hooks answer early by sending and returning the reply.
    return reply
      .code(verdict.refusal.status)
      .header('Content-Type', 'application/problem+json')
      .send(verdict.refusal.body);
  };
}
