// {{name}}: every binding whose key is a prefix of the routing key gets the message (an empty
// key matches everything). Change `route` and the cases in cases.toml to make it yours.
//
// The WIT's `router` interface is the exported `router` object (kebab-case names in
// camelCase, u64 ids as BigInt, flags as an object of booleans, variants as {tag, val}; a
// `result` is ok when the function returns and err with the text it throws).

const VERSION = '0.1.0';

// One instance serves one exchange: these are that exchange's bindings, id -> key.
const bindings = new Map();

/** The routing rule: ids (BigInt) of the bindings whose key prefixes `routingKey`. */
export function matching(bound, routingKey) {
  const ids = [];
  for (const [id, key] of bound) {
    if (routingKey.startsWith(key)) ids.push(id);
  }
  return ids;
}

export const router = {
  describe() {
    return {
      name: '{{name}}',
      version: VERSION,
      summary: 'every binding whose key is a prefix of the routing key',
    };
  },

  // No exchange arguments of its own; `throw 'text'` refuses a declare (406).
  validate(_arguments) {},

  // Ask only for what `route` reads; the same key always routes the same way, so the broker
  // may cache the answer.
  init(_exchange, _arguments) {
    return {
      fields: { routingKey: true, properties: false, body: false },
      headers: { tag: 'none' },
      cacheable: true,
    };
  },

  validateBinding(binding) {
    if (new TextEncoder().encode(binding.key).length > 255) {
      throw 'a binding key is at most 255 bytes';
    }
  },

  addBinding(binding) {
    bindings.set(binding.id, binding.key);
  },

  removeBinding(id) {
    bindings.delete(id);
  },

  route(message) {
    return new BigUint64Array(matching(bindings, message.routingKey));
  },
};
