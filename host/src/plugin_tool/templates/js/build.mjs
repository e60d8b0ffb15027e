// Builds the component with componentize-js's JavaScript API: `bourse plugin build` runs
// `node build.mjs OUT.wasm WIT_DIR`.
//
// componentize-js reads the WIT through the WASI shim @bytecodealliance/preview2-shim, which
// preopens no directory since 0.26: the root is preopened here (read for the WIT only), and
// package.json pins the shim since componentize-js imports it without declaring it.
import { componentize } from '@bytecodealliance/componentize-js';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { writeFile, rename } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(process.argv[2] ?? path.join(here, '{{name}}.wasm'));
const wit = path.resolve(process.argv[3] ?? path.join(here, 'wit'));

_setPreopens({ '/': '/' });
const { component } = await componentize({
  sourcePath: path.join(here, 'app.js'),
  witPath: wit,
  worldName: 'exchange-type',
  // The broker links no wasi:http, and a router needs neither fetch nor timers; stdio stays
  // so that an uncaught exception's text reaches the exchange's log.
  disableFeatures: ['http', 'fetch-event', 'clocks', 'random'],
});
await writeFile(`${out}.tmp`, component);
await rename(`${out}.tmp`, out);
