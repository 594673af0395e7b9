// `npm test`: starts one real `ratewatch up` for the whole suite, runs every
// test/*.test.mjs with Node's test runner against it, and always stops it.
// The Python that runs the service: $RATEWATCH_PYTHON, default `python3`.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { startService } from './support/service.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((name) => name.endsWith('.test.mjs'))
  .sort()
  .map((name) => join(here, name));

const started = Date.now();
const service = await startService();
console.log(`ratewatch up ready at ${service.url} in ${Date.now() - started} ms`);

let code = 1;
let child;
const forward = (signal) => () => child?.kill(signal);
process.on('SIGINT', forward('SIGINT'));
process.on('SIGTERM', forward('SIGTERM'));
try {
  child = spawn(process.execPath, ['--test', ...process.argv.slice(2), ...files], {
    stdio: 'inherit',
    env: {
      ...process.env,
      RATEWATCH_TEST_URL: service.url,
      RATEWATCH_TEST_KEY: service.apiKey,
      RATEWATCH_TEST_DATA_DIR: service.dataDir,
    },
  });
  code = await new Promise((resolve) => child.once('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0))));
} finally {
  await service.stop();
}
process.exit(code);
