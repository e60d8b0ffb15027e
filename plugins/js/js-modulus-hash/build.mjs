// Builds x-js-modulus-hash.wasm with componentize-js's JavaScript API (its CLI, and
// `jco componentize`, are not used: they fail on a file path on some machines).
//
// The WIT is read by a WebAssembly component inside componentize-js, through the WASI shim
// @bytecodealliance/preview2-shim, which since 0.26 preopens no directory: every path then
// fails with "No such file or directory". componentize-js imports the shim without declaring
// it, so package.json pins it, and the root is preopened here, read for the WIT only.
//
// Usage: node build.mjs OUT.wasm [WIT_DIR]   (plugins/build.sh passes both)
import { componentize } from '@bytecodealliance/componentize-js';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { writeFile, rename } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? path.join(here, 'x-js-modulus-hash.wasm');
const wit = process.argv[3] ?? path.join(here, '..', '..', '..', 'wit');

_setPreopens({ '/': '/' });
const { component } = await componentize({
  sourcePath: path.join(here, 'app.js'),
  witPath: path.resolve(wit),
  worldName: 'exchange-type',
  // The host links no wasi:http, and a router needs neither fetch nor timers; stdio stays so
  // that an uncaught exception's text reaches the exchange's log.
  disableFeatures: ['http', 'fetch-event', 'clocks', 'random'],
});
await writeFile(`${out}.tmp`, component);
await rename(`${out}.tmp`, out);
