// The Connect-style middleware in front of a real node:http server, against the service.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { byHeader, RateWatch, rateLimit } from '@ratewatch/client';

import { freePort, service } from './support/service.mjs';

/** A node:http server running `middleware` before a handler that answers 200 "hello". */
async function serve(middleware) {
  const server = createServer((req, res) => {
    middleware(req, res, (error) => {
      if (error) {
        res.statusCode = 500;
        res.end(`middleware error: ${error.name}`);
        return;
      }
      res.setHeader('Content-Type', 'text/plain');
      res.end('hello');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

describe('rateLimit middleware', () => {
  const { url, apiKey } = service();
  const client = new RateWatch(apiKey, { baseUrl: url, failOpen: false });
  const servers = [];
  let app;

  before(async () => {
    const tenant = crypto.randomUUID();
    app = await serve(rateLimit({ client, limit: 2, window: 60, key: byHeader('x-user', `mw:${tenant}:`) }));
    servers.push(app);
  });

  after(async () => {
    await Promise.all(servers.map((s) => s.close()));
  });

  test('adds RateLimit headers when allowed and answers 429 with Retry-After after the limit', { timeout: 10_000 }, async () => {
    const get = () => fetch(`${app.url}/things?x=1`, { headers: { 'x-user': 'alice' } });
    const first = await get();
    assert.equal(first.status, 200);
    assert.equal(await first.text(), 'hello');
    assert.equal(first.headers.get('ratelimit-policy'), '"default";q=2;w=60');
    assert.match(first.headers.get('ratelimit'), /^"default";r=1;t=\d+$/);
    assert.equal(first.headers.get('retry-after'), null);

    assert.equal((await get()).status, 200);

    const denied = await get();
    assert.equal(denied.status, 429);
    assert.equal(denied.headers.get('content-type'), 'application/problem+json');
    const retryAfter = Number(denied.headers.get('retry-after'));
    assert.ok(Number.isInteger(retryAfter) && retryAfter > 0, String(retryAfter));
    assert.match(denied.headers.get('ratelimit'), /^"default";r=0;t=\d+$/);
    const body = await denied.json();
    assert.equal(body.type, 'urn:ratewatch:problem:rate-limited');
    assert.equal(body.status, 429);
    assert.equal(body.reason, 'limit');
    assert.equal(body.retry_after, retryAfter);

    // Another key is counted on its own.
    const bob = await fetch(`${app.url}/things`, { headers: { 'x-user': 'bob' } });
    assert.equal(bob.status, 200);
  });

  test('a request without the key header passes unchecked', { timeout: 10_000 }, async () => {
    for (let i = 0; i < 4; i += 1) {
      const response = await fetch(`${app.url}/anonymous`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('ratelimit'), null);
    }
  });

  test('limits by client address by default', { timeout: 10_000 }, async () => {
    const window = 60;
    const byAddress = await serve(rateLimit({ client, limit: 1, window }));
    servers.push(byAddress);
    assert.equal((await fetch(byAddress.url)).status, 200);
    const denied = await fetch(byAddress.url);
    assert.equal(denied.status, 429);
    assert.equal(denied.headers.get('ratelimit-policy'), `"default";q=1;w=${window}`);
  });

  test('answers 503 when the service is down and the client does not fail open', { timeout: 10_000 }, async () => {
    const down = new RateWatch(apiKey, { baseUrl: `http://127.0.0.1:${await freePort()}`, failOpen: false });
    const strict = await serve(rateLimit({ client: down, limit: 1, window: 60, key: () => 'k' }));
    const lenientClient = new RateWatch(apiKey, { baseUrl: down.baseUrl, onFailOpen: () => {} });
    const lenient = await serve(rateLimit({ client: lenientClient, limit: 1, window: 60, key: () => 'k' }));
    servers.push(strict, lenient);

    const refused = await fetch(strict.url);
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('retry-after'), '1');
    assert.equal((await refused.json()).type, 'urn:ratewatch:problem:service-unavailable');

    const through = await fetch(lenient.url);
    assert.equal(through.status, 200);
    assert.equal(through.headers.get('ratelimit'), null);
  });

  test('a configuration error goes to next(error)', { timeout: 10_000 }, async () => {
    const broken = await serve(rateLimit({ client, limit: 0, window: 60, key: () => 'k' }));
    servers.push(broken);
    const response = await fetch(broken.url);
    assert.equal(response.status, 500);
    assert.equal(await response.text(), 'middleware error: InvalidRequestError');
  });
});
