// Signed keys: a key created with `ratewatch keys create --signed` on the running service.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { AuthenticationError, RateWatch, signature } from '@ratewatch/client';

import { python, service } from './support/service.mjs';

const run = promisify(execFile);

describe('signed keys', () => {
  const { url, dataDir } = service();
  let key;
  let secret;

  before(async () => {
    const { stdout } = await run(
      python(),
      ['-m', 'ratewatch', 'keys', 'create', '--tenant', 'default', '--signed', '--data-dir', dataDir],
      { timeout: 60_000 },
    );
    secret = /Signing secret: (\S+)/.exec(stdout)?.[1];
    key = stdout.trim().split(/\s+/).at(-1);
    assert.ok(secret && key, stdout);
  });

  test('the signature equals the Python SDK\'s', { timeout: 60_000 }, async () => {
    const args = ['s3cret', '1735689600', 'post', '/v1/check?x=1', '{"key":"é"}'];
    const { stdout } = await run(python(), [
      '-c',
      'import sys; from ratewatch.signing import signature; a = sys.argv[1:]; print(signature(*a[:4], a[4].encode()))',
      ...args,
    ]);
    assert.equal(signature(...args), stdout.trim());
  });

  test('a client with the signing secret is served; without it, refused', { timeout: 30_000 }, async () => {
    const signed = new RateWatch(key, { baseUrl: url, signingSecret: secret, failOpen: false });
    const result = await signed.check(`signed:${crypto.randomUUID()}`, { limit: 5, window: 60 });
    assert.deepEqual([result.allowed, result.remaining], [true, 4]);
    const [batched] = await signed.batch([{ key: `signed:${crypto.randomUUID()}`, limit: 1, window: 60 }]);
    assert.equal(batched.allowed, true);

    const unsigned = new RateWatch(key, { baseUrl: url, failOpen: false });
    await assert.rejects(unsigned.check('signed:x', { limit: 5, window: 60 }), AuthenticationError);
    const wrong = new RateWatch(key, { baseUrl: url, signingSecret: secret + 'x', failOpen: false });
    await assert.rejects(wrong.check('signed:x', { limit: 5, window: 60 }), AuthenticationError);
  });
});
