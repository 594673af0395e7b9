// The package is "type": "module"; this marks dist/cjs as CommonJS so that Node (and
// TypeScript, for the .d.ts files beside it) read the require() build as such.
import { writeFileSync } from 'node:fs';

writeFileSync(
  new URL('../dist/cjs/package.json', import.meta.url),
  JSON.stringify({ type: 'commonjs' }, null, 2) + '\n',
);
