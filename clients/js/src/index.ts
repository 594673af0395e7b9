export { DEFAULT_TIMEOUT, DEFAULT_URL, FAIL_OPEN_REASON, RateWatch, failedOpen } from './client.js';
export {
  AuthenticationError,
  InvalidRequestError,
  type Problem,
  RateWatchError,
  ServiceUnavailableError,
  TooManyRequestsError,
} from './errors.js';
export {
  byHeader,
  byIp,
  clientIp,
  fastifyRateLimit,
  type FastifyLikeReply,
  type FastifyLikeRequest,
  type KeyFunction,
  rateLimit,
  rateLimiter,
  type RateLimitOptions,
  type Verdict,
} from './middleware.js';
export { SIGNATURE_HEADER, TIMESTAMP_HEADER, signature } from './signing.js';
export type { Check, CheckOptions, CheckResult, RateWatchOptions } from './types.js';
