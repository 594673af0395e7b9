import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  AuthenticationError,
  FAIL_OPEN_REASON,
  InvalidRequestError,
  RateWatch,
  RateWatchError,
  ServiceUnavailableError,
} from '@ratewatch/client';

import { freePort, service } from './support/service.mjs';

const unique = (prefix) => `${prefix}:${crypto.randomUUID()}`;
const quiet = { onFailOpen: () => {} };

describe('against the service', () => {
  const { url, apiKey } = service();
  const limiter = new RateWatch(apiKey, { baseUrl: url, failOpen: false });

  test('denies after the limit, with retryAfter', { timeout: 10_000 }, async () => {
    const key = unique('deny');
    const results = [];
    for (let i = 0; i < 4; i += 1) results.push(await limiter.check(key, { limit: 3, window: 60 }));
    assert.deepEqual(
      results.map((r) => r.allowed),
      [true, true, true, false],
    );
    assert.deepEqual(
      results.map((r) => r.remaining),
      [2, 1, 0, 0],
    );
    const denied = results[3];
    assert.equal(denied.reason, 'limit');
    assert.equal(denied.limit, 3);
    assert.ok(Number.isInteger(denied.retryAfter) && denied.retryAfter > 0 && denied.retryAfter <= 120, String(denied.retryAfter));
    assert.ok(results.slice(0, 3).every((r) => r.retryAfter === null));
  });

  test('batch answers in order', { timeout: 10_000 }, async () => {
    const a = unique('batch-a');
    const b = unique('batch-b');
    const results = await limiter.batch([
      { key: a, limit: 1, window: 60 },
      { key: b, limit: 5, window: 60, cost: 2 },
      { key: a, limit: 1, window: 60 },
      { key: b, limit: 5, window: 60, cost: 2 },
    ]);
    assert.deepEqual(
      results.map((r) => [r.allowed, r.remaining, r.limit]),
      [
        [true, 0, 1],
        [true, 3, 5],
        [false, 0, 1],
        [true, 1, 5],
      ],
    );
    assert.deepEqual(await limiter.batch([]), []);
  });

  test('bad input is an InvalidRequestError with the problem type', { timeout: 10_000 }, async () => {
    const error = await limiter.check(unique('bad'), { limit: -2, window: 60 }).then(
      () => assert.fail('a negative limit was accepted'),
      (e) => e,
    );
    assert.ok(error instanceof InvalidRequestError, String(error));
    assert.ok(error instanceof RateWatchError);
    assert.equal(error.name, 'InvalidRequestError');
    assert.equal(error.status, 422);
    assert.equal(error.type, 'urn:ratewatch:problem:validation-error');
    assert.match(error.detail, /limit/);
    assert.equal(error.problem.status, 422);
  });

  test('bad input is not failed open', { timeout: 10_000 }, async () => {
    const lenient = new RateWatch(apiKey, { baseUrl: url, failOpen: true, ...quiet });
    await assert.rejects(lenient.batch([{ key: unique('bad'), limit: 1, window: 0 }]), InvalidRequestError);
  });

  test('a wrong key is an AuthenticationError', { timeout: 10_000 }, async () => {
    const stranger = new RateWatch('rwk_' + 'x1y2z3'.repeat(6), { baseUrl: url });
    const error = await stranger.check(unique('auth'), { limit: 1, window: 60 }).catch((e) => e);
    assert.ok(error instanceof AuthenticationError, String(error));
    assert.equal(error.status, 401);
    assert.equal(error.type, 'urn:ratewatch:problem:unauthorized');
  });

  test('the base URL comes from RATEWATCH_URL, the key from RATEWATCH_API_KEY', { timeout: 10_000 }, async () => {
    const saved = [process.env.RATEWATCH_URL, process.env.RATEWATCH_API_KEY];
    process.env.RATEWATCH_URL = url + '/';
    process.env.RATEWATCH_API_KEY = apiKey;
    try {
      const fromEnv = new RateWatch(undefined, { failOpen: false });
      assert.equal(fromEnv.baseUrl, url);
      const result = await fromEnv.check(unique('env'), { limit: 2, window: 60 });
      assert.equal(result.reason, 'ok');
    } finally {
      for (const [name, value] of [['RATEWATCH_URL', saved[0]], ['RATEWATCH_API_KEY', saved[1]]]) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });
});

describe('settings', () => {
  test('a missing key or a bad URL or timeout is refused at construction', () => {
    const saved = process.env.RATEWATCH_API_KEY;
    delete process.env.RATEWATCH_API_KEY;
    try {
      assert.throws(() => new RateWatch(), /RATEWATCH_API_KEY/);
    } finally {
      if (saved !== undefined) process.env.RATEWATCH_API_KEY = saved;
    }
    assert.throws(() => new RateWatch('k', { baseUrl: 'not a url' }), /"not a url" is not a URL/);
    assert.throws(() => new RateWatch('k', { baseUrl: 'ftp://host' }), /not an http\(s\) URL/);
    assert.throws(() => new RateWatch('k', { timeout: 0 }), /timeout 0/);
  });
});

describe('when the service cannot answer', () => {
  let closedUrl;
  let silent;
  let silentUrl;
  const sockets = new Set();

  before(async () => {
    closedUrl = `http://127.0.0.1:${await freePort()}`;
    // Accepts connections and never answers.
    silent = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
    silentUrl = `http://127.0.0.1:${silent.address().port}`;
  });

  after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => silent.close(resolve));
  });

  test('fails open at a closed port (the default)', { timeout: 10_000 }, async () => {
    const reported = [];
    const limiter = new RateWatch('rwk_key', { baseUrl: closedUrl, onFailOpen: (error) => reported.push(error) });
    const result = await limiter.check('user:1', { limit: 10, window: 60, cost: 3 });
    assert.deepEqual(result, {
      allowed: true,
      remaining: 7,
      resetIn: 60,
      retryAfter: null,
      limit: 10,
      reason: FAIL_OPEN_REASON,
    });
    assert.equal(FAIL_OPEN_REASON, 'client_fail_open');
    assert.equal(reported.length, 1);
    assert.ok(reported[0] instanceof ServiceUnavailableError);
    const batch = await limiter.batch([
      { key: 'a', limit: 1, window: 5 },
      { key: 'b', limit: 2, window: 6 },
    ]);
    assert.deepEqual(
      batch.map((r) => [r.allowed, r.remaining, r.resetIn, r.reason]),
      [
        [true, 0, 5, FAIL_OPEN_REASON],
        [true, 1, 6, FAIL_OPEN_REASON],
      ],
    );
  });

  test('throws ServiceUnavailableError at a closed port with failOpen: false', { timeout: 10_000 }, async () => {
    const limiter = new RateWatch('rwk_key', { baseUrl: closedUrl, failOpen: false });
    const error = await limiter.check('user:1', { limit: 10, window: 60 }).catch((e) => e);
    assert.ok(error instanceof ServiceUnavailableError, String(error));
    assert.equal(error.status, undefined);
    assert.match(error.message, /did not answer/);
  });

  test('times out after `timeout` milliseconds', { timeout: 10_000 }, async () => {
    const strict = new RateWatch('rwk_key', { baseUrl: silentUrl, timeout: 300, failOpen: false });
    const started = performance.now();
    const error = await strict.check('user:1', { limit: 10, window: 60 }).catch((e) => e);
    const elapsed = performance.now() - started;
    assert.ok(error instanceof ServiceUnavailableError, String(error));
    assert.match(error.message, /within 300 ms/);
    assert.ok(elapsed >= 250 && elapsed < 5_000, `took ${elapsed} ms`);

    const lenient = new RateWatch('rwk_key', { baseUrl: silentUrl, timeout: 300, ...quiet });
    const result = await lenient.check('user:1', { limit: 10, window: 60 });
    assert.equal(result.reason, FAIL_OPEN_REASON);
  });
});
