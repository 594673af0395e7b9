// Starts a real `ratewatch up` on a free port with a fresh data dir and a bootstrap admin key,
// waits for GET /health, and stops it (SIGTERM, then SIGKILL) when asked.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const python = () => process.env.RATEWATCH_PYTHON || 'python3';

/** A TCP port nothing listens on at the moment of asking. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForHealth(url, child, output, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`ratewatch up exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    }
    try {
      const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`ratewatch up not healthy after ${deadlineMs} ms:\n${output()}`);
}

/** Starts the service; resolves to { url, apiKey, dataDir, stop() }. */
export async function startService({ readyTimeoutMs = 120_000 } = {}) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'ratewatch-js-'));
  const apiKey = 'rwk_' + randomBytes(18).toString('hex'); // 40 characters
  let log = '';
  const child = spawn(
    python(),
    ['-m', 'ratewatch', 'up', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir],
    {
      env: { ...process.env, RATEWATCH_BOOTSTRAP_KEY: apiKey },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', resolve));

  let stopped = false;
  async function stop() {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(dataDir, { recursive: true, force: true });
  }

  const url = `http://127.0.0.1:${port}`;
  try {
    await waitForHealth(url, child, () => log, readyTimeoutMs);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, apiKey, dataDir, stop, log: () => log };
}

/** The service the runner started (test/run.mjs passes it in the environment). */
export function service() {
  const url = process.env.RATEWATCH_TEST_URL;
  const apiKey = process.env.RATEWATCH_TEST_KEY;
  const dataDir = process.env.RATEWATCH_TEST_DATA_DIR;
  if (!url || !apiKey || !dataDir) {
    throw new Error('no RateWatch service: run the tests with `npm test` (test/run.mjs starts one)');
  }
  return { url, apiKey, dataDir };
}
