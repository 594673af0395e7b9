// Checks by named policy (docs/policies.md), through the client and the middleware.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { RateWatch, byHeader, rateLimit } from '@ratewatch/client';

import { service } from './support/service.mjs';

describe('policies', () => {
  const { url, apiKey } = service();
  const limiter = new RateWatch(apiKey, { baseUrl: url, failOpen: false });
  const name = `js-${crypto.randomUUID().slice(0, 8)}`;
  let server;

  before(async () => {
    const created = await fetch(`${url}/v1/policies/${name}`, {
      method: 'PUT',
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ limits: [{ limit: 2, window: 60 }, { limit: 100, window: 3600 }] }),
    });
    assert.equal(created.status, 201, await created.text());
    const middleware = rateLimit({ client: limiter, policy: name, key: byHeader('x-user', `${name}:`) });
    server = createServer((req, res) => middleware(req, res, () => res.end('hello')));
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  after(() => new Promise((resolve) => server.close(resolve)));

  test('check and batch name a policy instead of limit and window', { timeout: 10_000 }, async () => {
    const key = `user:${crypto.randomUUID()}`;
    const results = [];
    for (let i = 0; i < 3; i += 1) results.push(await limiter.check(key, { policy: name }));
    assert.deepEqual(
      results.map((r) => [r.allowed, r.limit]),
      [
        [true, 2],
        [true, 2],
        [false, 2],
      ],
    );
    const batch = await limiter.batch([{ key: `${key}-b`, policy: name }, { key, limit: 5, window: 60 }]);
    assert.deepEqual(
      batch.map((r) => r.allowed),
      [true, true],
    );
  });

  test('a check with neither or both is refused before any request', async () => {
    await assert.rejects(limiter.check('k', {}), TypeError);
    await assert.rejects(limiter.check('k', { policy: name, limit: 1, window: 1 }), TypeError);
    assert.throws(() => rateLimit({ client: limiter }), TypeError);
  });

  test('the middleware limits by the policy and names it in its headers', { timeout: 10_000 }, async () => {
    const port = server.address().port;
    const get = () => fetch(`http://127.0.0.1:${port}/`, { headers: { 'x-user': 'alice' } });
    const first = await get();
    assert.equal(first.status, 200);
    assert.equal(first.headers.get('ratelimit-policy'), `"${name}";q=2`);
    assert.match(first.headers.get('ratelimit'), new RegExp(`^"${name}";r=1;t=\\d+$`));
    await get();
    const denied = await get();
    assert.equal(denied.status, 429);
    assert.match((await denied.json()).detail, new RegExp(`policy ${name} exceeded`));
  });
});
