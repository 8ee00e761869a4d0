'use strict';
// Request context: http(s).Server emits 'request' for every incoming request (Express, Koa
// and Fastify all sit on it). Running that emit inside AsyncLocalStorage.run makes the request
// visible to every hook called while handling it, including from its async continuations.
// The request object is built only when an event needs it.

const http = require('http');
const https = require('https');
const { AsyncLocalStorage } = require('async_hooks');

const HEADERS = ['user-agent', 'content-type', 'host', 'referer', 'x-forwarded-for'];
const als = new AsyncLocalStorage();

function install(kit) {
  for (const [mod, name] of [[http, 'http'], [https, 'https']]) {
    const hook = kit.hook(`${name}.Server.request`, 'network'); // listed in hello; no events
    const ok = kit.replace(mod.Server.prototype, 'emit', (orig) => function emit(event, req) {
      if (event !== 'request' || !hook.active || !req) return Reflect.apply(orig, this, arguments);
      return als.run({ req, proto: name }, () => Reflect.apply(orig, this, arguments));
    });
    if (!ok) kit.hooks.pop();
  }
}

function addParams(params, entries) {
  for (const [k, v] of entries) {
    if (!params[k]) params[k] = [];
    params[k].push(v);
  }
}

/** The current request as the protocol's `request` object, or null outside requests. Built
 * once per request and shared by its events (rebuilt once a body parser has set req.body). */
function current() {
  const store = als.getStore();
  if (!store) return null;
  const hasBody = Boolean(store.req.body);
  if (store.built !== undefined && store.builtWithBody === hasBody) return store.built;
  store.built = build(store);
  store.builtWithBody = hasBody;
  return store.built;
}

function build(store) {
  const req = store.req;
  const path = req.originalUrl || req.url || '/';
  const hdrs = req.headers || {};
  const params = {};
  const q = path.indexOf('?');
  if (q >= 0) addParams(params, new URLSearchParams(path.slice(q + 1)));
  // form/JSON bodies parsed by the app's middleware (express.urlencoded, body-parser)
  if (req.body && typeof req.body === 'object' && !Buffer.isBuffer(req.body)) {
    addParams(params, Object.entries(req.body).flatMap(([k, v]) => (Array.isArray(v)
      ? v.map((x) => [k, String(x)]) : [[k, typeof v === 'object' ? JSON.stringify(v) : String(v)]])));
  }
  const headers = {};
  for (const h of HEADERS) if (typeof hdrs[h] === 'string') headers[h] = hdrs[h];
  const sock = req.socket || {};
  return {
    method: req.method || '',
    url: `${store.proto}://${hdrs.host || 'localhost'}${path}`,
    remote_addr: sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : '',
    params,
    headers,
  };
}

module.exports = { family: 'request_context', install, current };
