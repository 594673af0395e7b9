// The product brief's Quick Start, verbatim, run as its own ES module that imports the
// package by name (Node resolves '@ratewatch/client' to this package).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { RateWatch } from '@ratewatch/client';

import { service } from './support/service.mjs';

const QUICK_START = `import { RateWatch } from '@ratewatch/client';

const limiter = new RateWatch(process.env.RATEWATCH_API_KEY);

// Check rate limit with sub-500μs response time
const result = await limiter.check('user:123', { 
  limit: 100, 
  window: 3600 
});

if (!result.allowed) {
  throw new TooManyRequestsError(\`Rate limited. Reset in \${result.resetIn}s\`);
}
`;

test('the Quick Start runs as written against the service', { timeout: 30_000 }, async () => {
  const { url, apiKey } = service();
  const packageDir = fileURLToPath(new URL('..', import.meta.url));
  const dir = mkdtempSync(join(packageDir, '.quickstart-'));
  try {
    const file = join(dir, 'quickstart.mjs');
    writeFileSync(file, QUICK_START + 'console.log(JSON.stringify(result));\n');
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      env: { ...process.env, RATEWATCH_API_KEY: apiKey, RATEWATCH_URL: url },
      timeout: 20_000,
    });
    const result = JSON.parse(stdout.trim().split('\n').at(-1));
    assert.deepEqual(Object.keys(result).sort(), ['allowed', 'limit', 'remaining', 'resetIn', 'retryAfter', 'reason'].sort());
    assert.equal(result.allowed, true);
    assert.equal(result.limit, 100);
    assert.equal(result.reason, 'ok');
    assert.equal(result.retryAfter, null);
    assert.ok(result.remaining < 100 && result.remaining >= 0);
    assert.ok(result.resetIn > 0 && result.resetIn <= 3600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the result counts down from the limit', { timeout: 10_000 }, async () => {
  const { url, apiKey } = service();
  const limiter = new RateWatch(apiKey, { baseUrl: url });
  const key = `qs:${crypto.randomUUID()}`;
  const first = await limiter.check(key, { limit: 100, window: 3600 });
  const second = await limiter.check(key, { limit: 100, window: 3600, cost: 5 });
  assert.deepEqual(
    [first.allowed, first.remaining, second.allowed, second.remaining],
    [true, 99, true, 94],
  );
});
