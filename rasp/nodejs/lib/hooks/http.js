'use strict';
// Outgoing HTTP: http.request/get, https.request/get, and the global fetch (undici, Node 18+).

const http = require('http');
const https = require('https');

function urlOf(proto, args) {
  const a0 = args[0];
  if (typeof a0 === 'string') return a0;
  if (a0 && typeof a0 === 'object' && typeof a0.href === 'string') return a0.href;
  const o = a0 && typeof a0 === 'object' ? a0 : {};
  const host = o.hostname || o.host || 'localhost';
  return `${o.protocol || proto}//${host}${o.port ? `:${o.port}` : ''}${o.path || '/'}`;
}

function methodOf(args) {
  for (const a of args.slice(0, 2)) {
    if (a && typeof a === 'object' && typeof a.method === 'string') return a.method.toUpperCase();
  }
  return 'GET';
}

function install(kit) {
  for (const [mod, name, proto] of [[http, 'http', 'http:'], [https, 'https', 'https:']]) {
    for (const fn of ['request', 'get']) {
      // blocking: the request is created and destroyed with the error before anything is
      // written: the app's req.on('error') gets it, as for a failed connection
      kit.wrap(mod, fn, `${name}.${fn}`, 'network',
        (...args) => [urlOf(proto, args), fn === 'get' ? 'GET' : methodOf(args)],
        (err, self, args) => {
          const req = Reflect.apply(mod[fn][Symbol.for('rampart.nodejs.original')], self, args);
          req.destroy(err);
          return req;
        });
    }
  }
  if (typeof globalThis.fetch === 'function') {
    // blocking: the returned promise rejects, as fetch does for a network error
    kit.wrap(globalThis, 'fetch', 'fetch', 'network', (input, init) => {
      const url = typeof input === 'string' ? input
        : input && typeof input.href === 'string' ? input.href
          : input && typeof input.url === 'string' ? input.url : String(input);
      const method = (init && init.method) || (input && typeof input === 'object' && input.method)
        || 'GET';
      return [url, String(method).toUpperCase()];
    }, 'promise');
  }
}

module.exports = { family: 'http', install };
