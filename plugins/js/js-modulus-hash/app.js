// x-js-modulus-hash: a JavaScript port of x-modulus-hash, built with componentize-js.
//
// Each message goes to exactly one binding: hash64(routing key) modulo the number of
// bindings, over the bindings sorted by id. Same answers as the Rust x-modulus-hash and the
// Python x-py-modulus-hash.
//
// The WIT's `router` interface is the exported `router` object (jco's bindings: kebab-case
// names in camelCase, u64 as BigInt, flags as an object of booleans, variants as {tag, val};
// a `result` is ok when the function returns and err with the text it throws).

import { Ring } from './modulus.js';

const VERSION = '0.1.0';
const encoder = new TextEncoder();

// One instance serves one exchange: module state is that exchange's routing cache.
const ring = new Ring();

export const router = {
  describe() {
    return {
      name: 'x-js-modulus-hash',
      version: VERSION,
      summary: 'JavaScript port of x-modulus-hash: one binding per message by hash modulo count',
    };
  },

  // No arguments of its own; others (alternate-exchange, ...) belong to the broker.
  validate(_arguments) {},

  init(_exchange, _arguments) {
    return {
      fields: { routingKey: true, properties: false, body: false },
      headers: { tag: 'none' },
      cacheable: true,
    };
  },

  validateBinding(_binding) {},

  addBinding(binding) {
    ring.add(binding.id);
  },

  removeBinding(id) {
    ring.remove(id);
  },

  route(message) {
    return new BigUint64Array(ring.pick(encoder.encode(message.routingKey)));
  },
};
