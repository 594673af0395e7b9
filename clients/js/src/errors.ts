/**
 * The errors of the RateWatch client. Every error it throws is a {@link RateWatchError};
 * errors the service answered carry its HTTP `status` and its RFC 9457 problem details.
 */

/** An RFC 9457 problem-details document as the service sends it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  instance?: string;
  [extension: string]: unknown;
}

export interface RateWatchErrorOptions {
  status?: number | undefined;
  problem?: Problem | undefined;
  cause?: unknown;
}

/** Base class of every error of the client. */
export class RateWatchError extends Error {
  /** The HTTP status of the service's answer; `undefined` when there was no answer. */
  readonly status: number | undefined;
  /** The service's problem-details document (empty when it sent none). */
  readonly problem: Problem;

  constructor(message: string, options: RateWatchErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.problem = { ...(options.problem ?? {}) };
  }

  /** The problem's stable `type`, e.g. `urn:ratewatch:problem:validation-error`. */
  get type(): string | undefined {
    return typeof this.problem.type === 'string' ? this.problem.type : undefined;
  }

  /** The problem's human-readable `detail`. */
  get detail(): string | undefined {
    return typeof this.problem.detail === 'string' ? this.problem.detail : undefined;
  }
}

/** The API key is missing, invalid or revoked (401), or may not do this (403). */
export class AuthenticationError extends RateWatchError {}

/** The service refused the request's content (400, 413 or 422); see `problem`. */
export class InvalidRequestError extends RateWatchError {}

/**
 * The service could not be reached, timed out, answered 5xx or answered garbage.
 * A client with `failOpen: true` (the default) returns an allowed result instead.
 */
export class ServiceUnavailableError extends RateWatchError {}

/**
 * For your own code to throw when a check is denied (the service itself answers a denied
 * check with HTTP 200 and `allowed: false`): carries the result's `retryAfter`.
 */
export class TooManyRequestsError extends RateWatchError {
  /** Seconds after which a retry may succeed, if known. */
  readonly retryAfter: number | null;

  constructor(message = 'Too many requests', retryAfter: number | null = null) {
    super(message, { status: 429 });
    this.retryAfter = retryAfter;
  }
}

/** The error for a non-200 answer, chosen by its status, with its problem document. */
export function errorForStatus(status: number, statusText: string, problem: Problem): RateWatchError {
  const title = problem.title ?? statusText;
  const message = `${status} ${title}` + (problem.detail ? `: ${problem.detail}` : '');
  if (status === 401 || status === 403) return new AuthenticationError(message, { status, problem });
  if (status === 400 || status === 413 || status === 422) {
    return new InvalidRequestError(message, { status, problem });
  }
  if (status >= 500) return new ServiceUnavailableError(message, { status, problem });
  return new RateWatchError(message, { status, problem });
}
